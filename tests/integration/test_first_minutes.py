"""What a new user meets first, end to end: real Airflow CLI runs against the emulator and closed ports.

* a task that fails early (wrong job id, bad destination, connection without a field) ends with its own
  error, not with a second, misleading ``XCom not found`` line from the extra links;
* a wrong endpoint fails at once in ``airflow connections test`` and says where and why;
* the emulator's ready-to-paste line works when pasted into a shell.
"""

from __future__ import annotations

import json
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.airflow_cli import REPO_ROOT, dags_test, migrate, run_airflow
from tests.fixtures.airflow_cli import airflow_env as cli_env

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SCENARIO = {
    "jobs": [
        {
            "id": "done-job",
            "timeline": [{"phase": "Completed", "at": 0}],
            "tasks": [{"id": "worker-0", "exit_code": 0, "log": {"text": "hello\n"}}],
        }
    ]
}

EARLY_FAILURES_DAG = """
from datetime import datetime

from airflow.sdk import DAG

from airflow_provider_modelarts.operators.modelarts import ModelArtsArchiveTaskLogsOperator
from airflow_provider_modelarts.sensors.modelarts import ModelArtsTrainingJobSensor

with DAG(dag_id="early_failures", schedule=None, start_date=datetime(2024, 1, 1), catchup=False):
    ModelArtsArchiveTaskLogsOperator(
        task_id="wrong_job", training_job_id="no-such-job", destination="{dest}", retries=0
    )
    ModelArtsArchiveTaskLogsOperator(
        task_id="bad_destination", training_job_id="done-job", destination="file://tmp/x", retries=0
    )
    ModelArtsArchiveTaskLogsOperator(
        task_id="missing_field",
        training_job_id="done-job",
        destination="{dest}",
        modelarts_conn_id="modelarts_no_project",
        retries=0,
    )
    ModelArtsTrainingJobSensor(
        task_id="sensor_wrong_job", training_job_id="no-such-job", poke_interval=1, timeout=30, retries=0
    )
    ModelArtsArchiveTaskLogsOperator(
        task_id="archived", training_job_id="done-job", destination="{dest}", retries=0
    )
"""


@pytest.fixture(scope="module")
def migrated_home(tmp_path_factory) -> Path:
    home = tmp_path_factory.mktemp("airflow-home")
    migrate(cli_env(home))
    return home


def closed_port() -> int:
    """A loopback port with nothing listening (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_early_failures_end_with_their_own_error_not_an_xcom_error(emulator_factory, migrated_home, tmp_path):
    emu = emulator_factory(SCENARIO)
    dags = tmp_path / "dags"
    dags.mkdir()
    dest = f"file://{tmp_path}/archive"
    (dags / "early_failures.py").write_text(EARLY_FAILURES_DAG.replace("{dest}", dest))
    no_project = json.loads(emu.connection_json())
    del no_project["extra"]["project_id"]
    env = cli_env(
        migrated_home,
        {
            "AIRFLOW_CONN_MODELARTS_DEFAULT": emu.connection_json(),
            "AIRFLOW_CONN_MODELARTS_NO_PROJECT": json.dumps(no_project),
        },
        dags_folder=dags,
    )
    proc = dags_test(env, "early_failures", check=False)
    out = proc.stdout + proc.stderr
    # Each task failed with its own, clear error ...
    assert "Training job 'no-such-job' was not found" in out
    assert "names 'tmp' as the host of a file:// URI" in out
    assert "Connection 'modelarts_no_project': extra 'project_id' is required" in out
    # ... the task that succeeded still stored its console link ...
    assert (tmp_path / "archive" / "done-job" / "manifest.json").is_file()
    # ... and no extra link complained about a value the failed tasks never stored.
    assert "XCom not found" not in out
    assert "Failed to push an xcom for task operator extra link" not in out


def test_connection_test_with_nothing_listening_is_quick_and_says_where(migrated_home):
    port = closed_port()
    conn = {
        "conn_type": "modelarts",
        "login": "AK",
        "password": "SK",
        "extra": {"project_id": "p1", "endpoint": f"http://127.0.0.1:{port}"},
    }
    env = cli_env(
        migrated_home,
        {"AIRFLOW_CONN_MODELARTS_DEFAULT": json.dumps(conn), "AIRFLOW__CORE__TEST_CONNECTION": "Enabled"},
    )
    result = run_airflow("connections", "test", "modelarts_default", env=env, timeout=120)
    out = result.stdout + result.stderr
    assert f"http://127.0.0.1:{port}: connection refused" in out, out[-2000:]
    # One attempt: the default budget (5 retries with backoff) would log "retrying" five times.
    assert "retrying" not in out


def test_emulator_paste_line_defines_the_connection_for_airflow(migrated_home, tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-m", "airflow_provider_modelarts.emulator", "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO_ROOT,
    )
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline() for _ in range(5)]
        (paste,) = [line.strip() for line in lines if "AIRFLOW_CONN_MODELARTS_DEFAULT" in line]
        assert paste.startswith("export AIRFLOW_CONN_MODELARTS_DEFAULT=")
        env = cli_env(migrated_home)
        airflow = shlex.quote(str(Path(sys.executable).with_name("airflow")))
        script = f"{paste}\n{airflow} connections get modelarts_default -o json\n"
        result = subprocess.run(
            ["bash", "-c", script], env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path
        )
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
        (conn,) = json.loads(result.stdout[result.stdout.index("[") :])
        assert conn["conn_type"] == "modelarts"
        assert conn["extra_dejson"]["endpoint"] == lines[0].strip()
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0
