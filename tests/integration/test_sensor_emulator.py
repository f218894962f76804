"""The sensor, trigger, notifier and links against the ModelArts emulator over real HTTP."""

from __future__ import annotations

import asyncio
import hashlib
import time
from datetime import datetime, timezone
from unittest import mock

import pytest
import requests
from airflow.providers.common.compat.sdk import TaskDeferred

from airflow_provider_modelarts.links import modelarts as links_module
from airflow_provider_modelarts.links.modelarts import ModelArtsTaskLogPreviewLink
from airflow_provider_modelarts.notifications.modelarts import ModelArtsTaskLogsNotifier
from airflow_provider_modelarts.sensors.modelarts import (
    ModelArtsTrainingJobFailed,
    ModelArtsTrainingJobSensor,
)
from airflow_provider_modelarts.triggers.modelarts import ModelArtsTrainingJobTrigger

pytestmark = pytest.mark.integration


def context():
    return {"ti": mock.MagicMock(), "task": None}


def pushed(ctx):
    return {c.kwargs["key"]: c.kwargs["value"] for c in ctx["ti"].xcom_push.call_args_list}


async def first_event(trigger):
    async for event in trigger.run():
        return event.payload
    raise AssertionError("trigger ended without an event")


def run_deferred(sensor, ctx):
    """Run a deferrable sensor like Airflow would: execute -> trigger.run() under asyncio -> resume."""
    try:
        return sensor.execute(ctx)
    except TaskDeferred as deferred:
        classpath, kwargs = deferred.trigger.serialize()
        assert classpath.endswith("ModelArtsTrainingJobTrigger")
        event = asyncio.run(first_event(ModelArtsTrainingJobTrigger(**kwargs)))
        return getattr(sensor, deferred.method_name)(ctx, event)


def test_poke_mode_success_links_download_the_log(modelarts_conn):
    ctx = context()
    sensor = ModelArtsTrainingJobSensor(task_id="wait", training_job_id="job-multi", poke_interval=0.2)
    result = sensor.execute(ctx)
    assert result["phase"] == "Completed"
    assert result["tasks"] == ["worker-0", "worker-1"]
    assert pushed(ctx)["log_urls"] == result["log_urls"]
    for task_id, link in result["log_urls"].items():
        expires = datetime.fromisoformat(link["expires_at"])
        assert 0 < (expires - datetime.now(timezone.utc)).total_seconds() <= 301
        body = requests.get(link["url"], timeout=10).content
        assert hashlib.sha256(body).hexdigest() == modelarts_conn.log_sha256("job-multi", task_id)


def test_poke_mode_failure(modelarts_conn):
    ctx = context()
    sensor = ModelArtsTrainingJobSensor(task_id="wait", training_job_id="job-failed", poke_interval=0.2)
    with pytest.raises(ModelArtsTrainingJobFailed) as info:
        sensor.execute(ctx)
    assert "job-failed ended in phase Failed" in str(info.value)
    assert "worker-0: exit code 1, process exited with code 1" in str(info.value)
    assert "worker-0" in pushed(ctx)["log_urls"]


def test_deferrable_waits_for_running_job_through_throttling(emulator_factory, monkeypatch):
    emu = emulator_factory(
        {
            "jobs": [
                {
                    "id": "job-slow",
                    "timeline": [
                        {"phase": "Pending", "at": 0},
                        {"phase": "Running", "at": 1},
                        {"phase": "Completed", "at": 3},
                    ],
                    "tasks": [{"id": "worker-0", "exit_code": 0, "log": {"text": "hello\n"}}],
                }
            ]
        }
    )
    monkeypatch.setenv("AIRFLOW_CONN_MODELARTS_DEFAULT", emu.connection_json())
    ctx = context()
    sensor = ModelArtsTrainingJobSensor(
        task_id="wait", training_job_id="job-slow", deferrable=True, poke_interval=0.2, timeout=60
    )
    emu.knobs.throttle_ratio = 0.4
    emu.knobs.retry_after = None
    with mock.patch.object(sensor, "defer", wraps=sensor.defer) as defer:
        try:
            sensor.execute(ctx)
        except TaskDeferred as deferred:
            emu.knobs.error_burst = 3
            event = asyncio.run(first_event(deferred.trigger))
        else:
            pytest.fail("a pending job must defer")
    assert defer.called
    assert event["status"] == "success", event
    emu.knobs.throttle_ratio = 0
    result = sensor.execute_complete(ctx, event)
    assert result["log_urls"]["worker-0"]["type"] == "preview"
    assert emu.counters["throttled"] > 0
    assert emu.counters["server_error"] == 3


def test_deferrable_already_terminal_does_not_defer(modelarts_conn):
    ctx = context()
    sensor = ModelArtsTrainingJobSensor(task_id="wait", training_job_id="job-ok", deferrable=True)
    result = sensor.execute(ctx)
    assert result["phase"] == "Completed"


def test_deferrable_failed_job(modelarts_conn):
    ctx = context()
    sensor = ModelArtsTrainingJobSensor(
        task_id="wait",
        training_job_id="job-running",
        deferrable=True,
        poke_interval=0.3,
        success_phases=["Failed"],
        failure_phases=["Completed"],
    )
    with pytest.raises(ModelArtsTrainingJobFailed, match="job-running ended in phase Completed"):
        run_deferred(sensor, ctx)


def test_trigger_unknown_job_is_an_error_event(modelarts_conn):
    event = asyncio.run(
        first_event(ModelArtsTrainingJobTrigger(training_job_id="no-such-job", poll_interval=0.1))
    )
    assert event["status"] == "error"
    assert "no-such-job" in event["message"]


def test_trigger_timeout(modelarts_conn):
    trigger = ModelArtsTrainingJobTrigger(
        training_job_id="job-running", poll_interval=0.2, end_time=time.time() + 0.5
    )
    event = asyncio.run(first_event(trigger))
    assert event["status"] == "timeout"
    assert event["phase"] in ("Pending", "Running")


def test_notifier_against_emulator(modelarts_conn):
    ctx = {}
    ModelArtsTaskLogsNotifier(training_job_id="job-failed", tail_lines=2)(ctx)
    info = ctx["modelarts"]
    assert info["phase"] == "Failed"
    assert info["errors"] == []
    assert info["log_tails"][
        "worker-0"
    ] == 'File "train.py", line 3, in <module>\nRuntimeError: CUDA out of memory'.replace("File", "  File")
    body = requests.get(info["log_urls"]["worker-0"]["url"], timeout=10).text
    assert "CUDA out of memory" in body


def test_preview_link_resolves_fresh_link(modelarts_conn, monkeypatch):
    stored = {
        "training_job_id": "job-ok",
        "console_url": "https://console",
        "modelarts_conn_id": "modelarts_default",
    }
    monkeypatch.setattr(links_module, "_stored_job", lambda ti_key: stored)
    url = ModelArtsTaskLogPreviewLink().get_link(None, ti_key=None)
    assert url.startswith(modelarts_conn.url)
    assert "training finished" in requests.get(url, timeout=10).text


def test_preview_link_falls_back_fast_when_modelarts_is_slow(modelarts_conn, monkeypatch):
    stored = {
        "training_job_id": "job-ok",
        "console_url": "https://console",
        "modelarts_conn_id": "modelarts_default",
    }
    monkeypatch.setattr(links_module, "_stored_job", lambda ti_key: stored)
    modelarts_conn.knobs.latency = 10
    started = time.monotonic()
    assert ModelArtsTaskLogPreviewLink().get_link(None, ti_key=None) == "https://console"
    assert time.monotonic() - started < 5


def test_notifier_sends_mail_through_smtp_notifier(modelarts_conn, smtp_conn):
    from airflow.providers.smtp.notifications.smtp import SmtpNotifier

    from tests.fixtures.smtp_server import message_text

    smtp = SmtpNotifier(
        to="oncall@example.com",
        subject="Training job {{ modelarts.training_job_id }} {{ modelarts.phase }}",
        html_content="<pre>{{ modelarts.summary }}</pre>",
    )
    ModelArtsTaskLogsNotifier(training_job_id="job-failed", notifier=smtp, tail_lines=3)({})
    [message] = smtp_conn.wait_for_messages(1)
    assert message["Subject"] == "Training job job-failed Failed"
    text = message_text(message)
    assert "RuntimeError: CUDA out of memory" in text
    assert modelarts_conn.url in text
