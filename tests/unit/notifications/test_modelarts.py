from __future__ import annotations

from datetime import datetime, timezone

import pendulum
import pytest
from airflow.providers.common.compat.sdk import BaseNotifier
from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.sdk import DAG

try:
    from airflow.serialization.serialized_objects import DagSerialization
except ImportError:  # Airflow < 3.2
    from airflow.serialization.serialized_objects import SerializedDAG as DagSerialization

from airflow_provider_modelarts.notifications import modelarts as notifier_module
from airflow_provider_modelarts.notifications.modelarts import ModelArtsTaskLogsNotifier, TemplatableDag
from tests.fixtures.fake_hooks import fake_hook as autospec_hook

JOB = "job-fail"
LOG = "".join(f"line {i}\n" for i in range(1, 201))


class HookScript:
    """What the (autospecced) hook answers."""

    fail = set()

    def console_url(self, training_job_id):
        return f"https://console.example/{training_job_id}"

    def get_training_job(self, training_job_id):
        if "job" in self.fail:
            raise RuntimeError("ModelArts unreachable")
        return {
            "status": {
                "phase": "Failed",
                "tasks": ["worker-0", "worker-1"],
                "task_statuses": [
                    {"task": "worker-0", "exit_code": 1, "message": "Traceback: boom"},
                    {"task": "worker-1", "exit_code": 0, "message": ""},
                ],
            }
        }

    def get_task_log_url(self, training_job_id, task_id, download=False):
        if "url" in self.fail:
            raise RuntimeError("403 not allowed")
        return f"http://obs.local/{training_job_id}/{task_id}.log?Expires=1893456300&Signature=SIG{task_id}"

    @staticmethod
    def log_url_expires_at(url, *, default_ttl=300):
        return datetime(2030, 1, 1, tzinfo=timezone.utc)

    def preview_task_log(self, training_job_id, task_id):
        if "preview" in self.fail:
            raise RuntimeError("preview broken")
        return {"content": LOG, "current_size": len(LOG), "full_size": len(LOG)}

    def get_training_job_events(self, training_job_id, *, level=None, limit=None, **kwargs):
        return []


@pytest.fixture(autouse=True)
def fake_hook(monkeypatch):
    HookScript.fail = set()
    monkeypatch.setattr(
        notifier_module, "ModelArtsHook", lambda conn_id, **kwargs: autospec_hook(HookScript())
    )
    return HookScript


class RecordingNotifier(BaseNotifier):
    template_fields = ("message",)

    def __init__(self, message):
        super().__init__()
        self.message = message
        self.sent = []

    def notify(self, context):
        self.sent.append((self.message, context["modelarts"]))


def serialized_dag():
    with DAG("alert_dag", schedule=None, start_date=pendulum.datetime(2024, 1, 1)) as dag:
        EmptyOperator(task_id="t")
    return DagSerialization.from_dict(DagSerialization.to_dict(dag))


def test_template_fields_are_attributes():
    notifier = ModelArtsTaskLogsNotifier(training_job_id=JOB)
    for field in notifier.template_fields:
        assert hasattr(notifier, field)
    assert "training_job_id" in notifier.template_fields


def test_wrapped_notifier_gets_links_and_tails():
    inner = RecordingNotifier(
        "{{ modelarts.training_job_id }} {{ modelarts.phase }} {{ modelarts.log_tails['worker-0'].splitlines()[-1] }}"
    )
    notifier = ModelArtsTaskLogsNotifier(training_job_id="{{ params.job }}", notifier=inner, tail_lines=5)
    notifier({"params": {"job": JOB}})
    [(message, info)] = inner.sent
    assert message == f"{JOB} Failed line 200"
    assert info["log_tails"]["worker-0"] == "line 196\nline 197\nline 198\nline 199\nline 200"
    assert info["log_urls"]["worker-1"]["url"].endswith("SIGworker-1")
    assert info["log_urls"]["worker-1"]["expires_at"] == "2030-01-01T00:00:00+00:00"
    assert info["log_urls"]["worker-1"]["type"] == "preview"
    assert info["errors"] == []
    assert "Task worker-0: exit code 1, Traceback: boom" in info["summary"]


def test_task_ids_filter():
    inner = RecordingNotifier("x")
    ModelArtsTaskLogsNotifier(training_job_id=JOB, notifier=inner, task_ids=["worker-1"])({})
    assert list(inner.sent[0][1]["log_urls"]) == ["worker-1"]


@pytest.mark.parametrize("broken", ["url", "preview", "job"])
def test_partial_failure_still_sends_with_a_note(fake_hook, broken):
    fake_hook.fail = {broken}
    inner = RecordingNotifier("{{ modelarts.errors | length }} problem(s)")
    ModelArtsTaskLogsNotifier(training_job_id=JOB, notifier=inner)({})
    [(message, info)] = inner.sent
    assert message != "0 problem(s)"
    assert info["errors"]
    assert any("NOTE:" in line for line in info["summary"].splitlines())
    if broken == "url":
        assert info["log_tails"]
    if broken == "preview":
        assert info["log_urls"]


def test_without_wrapped_notifier_logs_summary(capsys, caplog):
    notifier = ModelArtsTaskLogsNotifier(training_job_id=JOB, tail_lines=2)
    with caplog.at_level("INFO"):
        notifier({})
    logged = capsys.readouterr().out + caplog.text
    assert "ModelArts training job job-fail: phase Failed" in logged
    assert "line 199\nline 200" in logged


def test_serialized_dag_context_crashes_plain_notifiers():
    """apache/airflow#64649: a DAG-level callback under `airflow dags test` gets a SerializedDAG."""
    dag = serialized_dag()
    assert not hasattr(dag, "get_template_env")
    with pytest.raises(AttributeError, match="get_template_env"):
        RecordingNotifier("{{ dag.dag_id }}")({"dag": dag})


def test_serialized_dag_context_works_with_modelarts_notifier():
    dag = serialized_dag()
    inner = RecordingNotifier("{{ dag.dag_id }}: {{ modelarts.phase }}")
    ModelArtsTaskLogsNotifier(training_job_id="{{ dag.dag_id }}-x", notifier=inner)({"dag": dag})
    [(message, info)] = inner.sent
    assert message == "alert_dag: Failed"
    assert info["training_job_id"] == "alert_dag-x"


def test_templatable_dag_forwards_attributes():
    wrapped = TemplatableDag(serialized_dag())
    assert wrapped.dag_id == "alert_dag"
    assert wrapped.get_template_env().from_string("{{ 1 + 1 }}").render() == "2"


def test_smtp_notifier_wrapped_with_serialized_dag(monkeypatch):
    from airflow.providers.smtp.notifications.smtp import SmtpNotifier

    sent = {}

    class FakeSmtpHook:
        from_email = "airflow@example.com"
        subject_template = None
        html_content_template = None

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def send_email_smtp(self, **kwargs):
            sent.update(kwargs)

    monkeypatch.setattr(SmtpNotifier, "hook", property(lambda self: FakeSmtpHook()))
    smtp = SmtpNotifier(
        to="oncall@example.com",
        subject="{{ dag.dag_id }} failed: {{ modelarts.phase }}",
        html_content="<pre>{{ modelarts.summary }}</pre>",
    )
    ModelArtsTaskLogsNotifier(training_job_id=JOB, notifier=smtp)({"dag": serialized_dag()})
    assert sent["subject"] == "alert_dag failed: Failed"
    assert "SIGworker-0" in sent["html_content"]
    assert "line 200" in sent["html_content"]
