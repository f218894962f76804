"""Run the sensor/notifier example DAGs end to end with ``airflow dags test`` against the emulator.

Each test uses a fresh AIRFLOW_HOME with SQLite (``airflow db migrate``), the example_dags folder, the
emulator started with ``example_dags/demo_scenario.json`` and, for the alert, a real SMTP server.
"""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3
from pathlib import Path

import pytest
import requests

from tests.fixtures.airflow_cli import EXAMPLE_DAGS, airflow_env, dags_test, migrate
from tests.fixtures.smtp_server import message_text

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SCENARIO = EXAMPLE_DAGS / "demo_scenario.json"


@pytest.fixture(scope="module")
def migrated_home(tmp_path_factory):
    home = tmp_path_factory.mktemp("airflow-home")
    migrate(home_env(home))
    return home


def home_env(home: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    return airflow_env(home, {"AIRFLOW__CORE__UNIT_TEST_MODE": "False", **(extra or {})})


def xcom_values(home: Path, dag_id: str) -> dict[tuple[str, str], object]:
    with sqlite3.connect(home / "airflow.db") as db:
        rows = db.execute("SELECT task_id, key, value FROM xcom WHERE dag_id = ?", (dag_id,)).fetchall()
    return {(task_id, key): json.loads(value) for task_id, key, value in rows}


def task_states(home: Path, dag_id: str) -> dict[str, str]:
    with sqlite3.connect(home / "airflow.db") as db:
        rows = db.execute("SELECT task_id, state FROM task_instance WHERE dag_id = ?", (dag_id,)).fetchall()
    return dict(rows)


def test_after_training_dag(migrated_home, emulator_factory, tmp_path):
    emu = emulator_factory(SCENARIO)
    archive = tmp_path / "archive"
    result = dags_test(
        home_env(
            migrated_home,
            {
                "AIRFLOW_CONN_MODELARTS_DEFAULT": emu.connection_json(),
                "MODELARTS_TRAINING_JOB_ID": "demo-train-ok",
                "MODELARTS_ARCHIVE_DESTINATION": archive.as_uri(),
                "MODELARTS_POLL_INTERVAL": "1",
            },
        ),
        "example_modelarts_after_training",
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-5000:]
    states = task_states(migrated_home, "example_modelarts_after_training")
    assert states == {
        "wait_for_training": "success",
        "download_logs": "success",
        "archive_logs": "success",
    }, output[-5000:]
    xcoms = xcom_values(migrated_home, "example_modelarts_after_training")
    log_urls = xcoms[("wait_for_training", "log_urls")]
    assert set(log_urls) == {"worker-0", "worker-1"}
    report = xcoms[("download_logs", "return_value")]
    for task_id in ("worker-0", "worker-1"):
        assert report[task_id]["sha256"] == emu.log_sha256("demo-train-ok", task_id)
        archived = archive / "demo-train-ok" / f"{task_id}.log"
        assert hashlib.sha256(archived.read_bytes()).hexdigest() == emu.log_sha256("demo-train-ok", task_id)
    assert emu.counters["job"] >= 3  # checked before deferring, polled by the trigger, re-read at the end
    # The signed part of the links never reaches the task logs.
    signature = re.search(r"Signature=([^&]+)", log_urls["worker-0"]["url"]).group(1)
    logs = "".join(p.read_text(errors="replace") for p in (migrated_home / "logs").rglob("*") if p.is_file())
    assert signature not in logs
    assert signature not in output


def test_failure_alert_dag_sends_mail_with_fresh_link_and_tail(migrated_home, emulator_factory, smtp_server):
    emu = emulator_factory(SCENARIO)
    topic = f"urn:smn:{emu.region}:{emu.project_id}:modelarts-alerts"
    result = dags_test(
        home_env(
            migrated_home,
            {
                "AIRFLOW_CONN_MODELARTS_DEFAULT": emu.connection_json(),
                "AIRFLOW_CONN_SMTP_DEFAULT": smtp_server.connection_json(),
                "MODELARTS_TRAINING_JOB_ID": "demo-train-fail",
                "MODELARTS_ALERT_EMAIL": "ml-team@example.com",
                "MODELARTS_ALERT_SMN_TOPIC_URN": topic,
                "MODELARTS_POLL_INTERVAL": "1",
            },
        ),
        "example_modelarts_failure_alert",
        check=False,
    )
    output = result.stdout + result.stderr
    assert task_states(migrated_home, "example_modelarts_failure_alert") == {"wait_for_training": "failed"}, (
        output[-5000:]
    )
    assert "has no attribute 'get_template_env'" not in output
    messages = smtp_server.wait_for_messages(1, timeout=10)
    assert len(messages) == 1, output[-5000:]
    message = messages[0]
    assert message["Subject"].endswith("training job demo-train-fail is Failed")
    assert "ml-team@example.com" in message["To"]
    body = message_text(message)
    assert "RuntimeError: CUDA out of memory" in body
    assert "[ModelArts Service Log] exit with 1" in body
    assert "worker-0: exit code 1 CUDA out of memory" in body
    urls = re.findall(r'href="([^"]+)"', body)
    log_url = next(u for u in urls if u.startswith(emu.url)).replace("&amp;", "&")
    # The link was minted when the alert was built, so it still works now.
    response = requests.get(log_url, timeout=10)
    assert response.status_code == 200
    assert "CUDA out of memory" in response.text
    # The same failure also went to the SMN topic, signed with the connection's AK/SK.
    [published] = emu.smn.messages()
    assert published["topic_urn"] == topic
    assert published["subject"].endswith("training job demo-train-fail is Failed")
    default = published["message_structure"]["default"]
    assert "RuntimeError: CUDA out of memory" in default
    assert "Task worker-0: exit code 1" in default
    sms = published["message_structure"]["sms"]
    assert sms.startswith("Airflow example_modelarts_failure_alert: ModelArts job demo-train-fail is Failed.")
    assert published["sms"]["truncated"] is False
    assert "message_id" in output
