"""The archive operator's log links are never registered with the secret masker, and never reach a log
line, an error message or a traceback either: checked on the raw text, without Airflow's masker."""

from __future__ import annotations

import logging
import traceback
from typing import Any
from unittest import mock

import pytest

from airflow_provider_modelarts import redaction
from airflow_provider_modelarts.exceptions import ModelArtsError
from airflow_provider_modelarts.hooks.modelarts import ModelArtsHook
from airflow_provider_modelarts.operators.modelarts import ModelArtsArchiveTaskLogsOperator
from airflow_provider_modelarts.redaction import signed_url_secrets
from tests.reliability._secrets import find_leaks

pytestmark = [pytest.mark.integration]

MiB = 1024 * 1024
SCENARIO = {
    "jobs": [
        {
            "id": "priv-job",
            "timeline": [{"phase": "Completed", "at": 0}],
            "tasks": [
                {"id": f"worker-{i}", "exit_code": 0, "log": {"generate": {"size": MiB + i, "seed": i}}}
                for i in range(4)
            ],
        }
    ]
}


@pytest.mark.timeout(180)
def test_archive_links_stay_out_of_logs_errors_and_the_masker(
    emulator_factory, monkeypatch, tmp_path, caplog, capfd
):
    emu = emulator_factory(SCENARIO)
    monkeypatch.setenv("AIRFLOW_CONN_MODELARTS_DEFAULT", emu.connection_json())
    caplog.set_level(logging.DEBUG)
    emu.knobs.drop_after_bytes = MiB // 3
    emu.knobs.drop_downloads = 3
    emu.knobs.throttle_ratio = 0.3
    emu.knobs.retry_after = 0
    emu.knobs.link_ttl = 1

    issued: list[str] = []
    original = ModelArtsHook.get_task_log_url

    def recording(self: ModelArtsHook, *args: Any, **kwargs: Any) -> str:
        url = original(self, *args, **kwargs)
        issued.append(url)
        return url

    registered: list[str] = []
    tracebacks: list[str] = []
    with (
        mock.patch.object(ModelArtsHook, "get_task_log_url", recording),
        mock.patch.object(redaction, "mask_secret", registered.append),
    ):
        op = ModelArtsArchiveTaskLogsOperator(
            task_id="archive", training_job_id="priv-job", destination=f"file://{tmp_path}/a", retry_wait=0
        )
        result = op.execute({"ti": mock.MagicMock(), "task": None})  # type: ignore[arg-type]
        assert len(result["tasks"]) == 4
        # A run that gives up: its error and whole traceback are what a task log would show.
        emu.knobs.drop_after_bytes, emu.knobs.drop_downloads = 1000, 100
        failing = ModelArtsArchiveTaskLogsOperator(
            task_id="archive2",
            training_job_id="priv-job",
            destination=f"file://{tmp_path}/b",
            max_attempts=2,
            retry_wait=0,
        )
        with pytest.raises(ModelArtsError) as info:
            failing.execute({"ti": mock.MagicMock(), "task": None})  # type: ignore[arg-type]
        tracebacks.append("".join(traceback.format_exception(info.value)))

    assert emu.counters["dropped"] > 0 and emu.counters["throttled"] > 0
    assert len(issued) > 8, "expired and dropped links were not renewed"
    secrets = [s for url in issued for s in signed_url_secrets(url)]
    assert secrets
    assert registered == [], "the operator registered its private links with the masker"

    out, err = capfd.readouterr()
    text = "\n".join(
        [f"{r.getMessage()} {r.exc_text or ''}" for r in caplog.records] + [out, err, *tracebacks]
    )
    # urllib3 logged the download requests (their query redacted by the provider's filter).
    assert any(
        r.name.startswith("urllib3") and "modelarts-emulator-logs" in r.getMessage() for r in caplog.records
    )
    leaks = find_leaks(text, secrets)
    assert not leaks, "\n".join(leaks)
