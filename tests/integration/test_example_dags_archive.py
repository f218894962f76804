"""The archive example DAGs end to end: ``airflow dags test`` in a subprocess (fresh AIRFLOW_HOME, SQLite,
``airflow db migrate`` first) against the emulator; the archive on disk must match the emulated logs."""

from __future__ import annotations

import hashlib
import json
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from tests.fixtures.airflow_cli import airflow_env as cli_env
from tests.fixtures.airflow_cli import dags_test, migrate

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MiB = 1024 * 1024

SCENARIO = {
    "jobs": [
        {
            "id": "train-running",
            "name": "running-then-done",
            "timeline": [
                {"phase": "Pending", "at": 0},
                {"phase": "Running", "at": 1},
                {"phase": "Completed", "at": 4},
            ],
            "tasks": [
                {"id": "worker-0", "exit_code": 0, "log": {"generate": {"size": 2 * MiB + 3, "seed": 1}}},
                {"id": "worker-1", "exit_code": 0, "log": {"generate": {"size": MiB + 5, "seed": 2}}},
            ],
        },
        {
            "id": "train-failed",
            "name": "failed",
            "timeline": [{"phase": "Failed", "at": 0}],
            "tasks": [{"id": "worker-0", "exit_code": 1, "log": {"text": "step 1\nRuntimeError: boom\n"}}],
        },
        {
            "id": "train-done",
            "name": "done",
            "timeline": [{"phase": "Completed", "at": 0}],
            "tasks": [{"id": "worker-0", "exit_code": 0, "log": {"generate": {"size": 300_000, "seed": 3}}}],
        },
    ]
}


@pytest.fixture(scope="module")
def airflow_env(tmp_path_factory) -> dict[str, str]:
    home = tmp_path_factory.mktemp("airflow-home")
    env = cli_env(home, {"AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False"})
    migrate(env)
    return env


def check_job_archive(emu, root: Path, job_id: str, suffix: str = ".log") -> dict:
    manifest = json.loads((root / job_id / "manifest.json").read_text())
    assert manifest["complete"] is True
    for entry in manifest["tasks"]:
        data = (root / job_id / f"{entry['task_id']}{suffix}").read_bytes()
        if suffix.endswith(".gz"):
            import gzip

            data = gzip.decompress(data)
        assert hashlib.sha256(data).hexdigest() == emu.log_sha256(job_id, entry["task_id"]) == entry["sha256"]
        assert len(data) == emu.log_size(job_id, entry["task_id"]) == entry["size"]
    return manifest


def test_example_archive_logs_waits_deferred_and_archives(emulator_factory, airflow_env, tmp_path):
    emu = emulator_factory(SCENARIO)
    emu.knobs.drop_after_bytes = MiB
    emu.knobs.drop_downloads = 1
    env = {
        **airflow_env,
        "AIRFLOW_CONN_MODELARTS_DEFAULT": emu.connection_json(),
        "MODELARTS_TRAINING_JOB_ID": "train-running",
        "MODELARTS_ARCHIVE_DESTINATION": f"file://{tmp_path}/archive",
        "MODELARTS_ARCHIVE_COMPRESSION": "gzip",
        "MODELARTS_POLL_INTERVAL": "1",
        "MODELARTS_DEFERRABLE": "true",
    }
    proc = dags_test(env, "example_modelarts_archive_logs")
    manifest = check_job_archive(emu, tmp_path / "archive", "train-running", ".log.gz")
    assert [e["task_id"] for e in manifest["tasks"]] == ["worker-0", "worker-1"]
    assert emu.counters["dropped"] == 1
    assert "manifest" in proc.stdout + proc.stderr


def test_example_scheduled_archival_maps_over_finished_jobs(emulator_factory, airflow_env, tmp_path):
    emu = emulator_factory(SCENARIO)
    env = {
        **airflow_env,
        "AIRFLOW_CONN_MODELARTS_DEFAULT": emu.connection_json(),
        "MODELARTS_ARCHIVE_DESTINATION": f"file://{tmp_path}/scheduled",
    }
    # A logical date whose hourly data interval contains "now", when the emulated jobs finished.
    now = datetime.now(timezone.utc)
    if now.minute == 59 and now.second > 30:
        pytest.skip("too close to the hour boundary for a stable data interval")
    time.sleep(4.5)  # let train-running reach Completed, so all three jobs have finished
    logical = (now + timedelta(hours=1)).replace(minute=0, second=0, microsecond=0)
    proc = dags_test(env, "example_modelarts_scheduled_archival", logical.isoformat())
    assert "3 training job(s) finished" in proc.stdout + proc.stderr
    root = tmp_path / "scheduled"
    assert sorted(p.name for p in root.iterdir()) == ["train-done", "train-failed", "train-running"]
    check_job_archive(emu, root, "train-running")
    check_job_archive(emu, root, "train-done")
    failed = check_job_archive(emu, root, "train-failed")
    assert failed["phase"] == "Failed"
