from __future__ import annotations

from datetime import datetime, timedelta, timezone
from unittest import mock

import pytest
from airflow.providers.common.compat.sdk import (
    AirflowException,
    AirflowFailException,
    PokeReturnValue,
    TaskDeferred,
)

from airflow_provider_modelarts.exceptions import ModelArtsJobFailedError, ModelArtsResponseError
from airflow_provider_modelarts.links import modelarts as links_module
from airflow_provider_modelarts.links.modelarts import (
    TRAINING_JOB_XCOM_KEY,
    ModelArtsTaskLogPreviewLink,
    ModelArtsTrainingJobConsoleLink,
)
from airflow_provider_modelarts.sensors.modelarts import (
    ModelArtsTrainingJobFailed,
    ModelArtsTrainingJobSensor,
)
from airflow_provider_modelarts.triggers.modelarts import ModelArtsTrainingJobTrigger
from tests.fixtures.fake_hooks import fake_hook

JOB = "job-1"
EXPIRES = datetime(2030, 1, 1, 0, 5, tzinfo=timezone.utc)


def job_body(phase, tasks=("worker-0", "worker-1"), task_statuses=None, secondary=None):
    status = {"phase": phase, "tasks": list(tasks)}
    if task_statuses is not None:
        status["task_statuses"] = task_statuses
    if secondary:
        status["secondary_phase"] = secondary
    return {"metadata": {"id": JOB}, "status": status}


class HookScript:
    """What the (autospecced) hook answers; ``calls`` records the requests."""

    def __init__(self, *jobs):
        self.jobs = list(jobs)
        self.calls = []

    def get_training_job(self, training_job_id):
        self.calls.append(("job", training_job_id))
        return self.jobs.pop(0) if len(self.jobs) > 1 else self.jobs[0]

    def get_task_log_url(self, training_job_id, task_id, download=False):
        self.calls.append(("url", task_id, download))
        kind = "download" if download else "preview"
        return f"http://obs.local/{training_job_id}/{task_id}.log?{kind}=1&Expires=1893456300&Signature=SIG-{task_id}"

    @staticmethod
    def log_url_expires_at(url, *, default_ttl=300):
        return EXPIRES

    def console_url(self, training_job_id):
        return f"https://console.example/modelarts/#/trainingJobs/{training_job_id}"


def make_hook(*jobs):
    script = HookScript(*jobs)
    hook = fake_hook(script)
    hook.calls = script.calls
    return hook


def make_sensor(hook, **kwargs):
    # Streaming has its own tests (tests/unit/sensors/test_log_streaming.py); these check the rest.
    kwargs.setdefault("stream_logs", False)
    sensor = ModelArtsTrainingJobSensor(task_id="wait", training_job_id=JOB, **kwargs)
    sensor.hook = hook
    return sensor


@pytest.fixture
def context():
    ti = mock.MagicMock()
    return {"ti": ti, "task": None}


def pushed(context):
    return {c.kwargs["key"]: c.kwargs["value"] for c in context["ti"].xcom_push.call_args_list}


def test_template_fields_are_attributes():
    sensor = ModelArtsTrainingJobSensor(task_id="wait", training_job_id=JOB)
    for field in sensor.template_fields:
        assert hasattr(sensor, field)
    assert "training_job_id" in sensor.template_fields
    assert "modelarts_conn_id" in sensor.template_fields


def test_defaults():
    sensor = ModelArtsTrainingJobSensor(task_id="wait", training_job_id=JOB)
    assert sensor.success_phases == ("Completed",)
    assert sensor.failure_phases == ("Failed", "Abnormal", "Terminated")
    assert sensor.deferrable is False
    assert sensor.log_url_type == "preview"
    assert [type(link) for link in sensor.operator_extra_links] == [ModelArtsTrainingJobConsoleLink]


def test_preview_link_is_opt_in():
    sensor = ModelArtsTrainingJobSensor(task_id="wait", training_job_id=JOB, enable_log_preview_link=True)
    assert ModelArtsTaskLogPreviewLink in [type(link) for link in sensor.operator_extra_links]


def test_poke_running_returns_false(context):
    hook = make_hook(job_body("Running"))
    assert make_sensor(hook).poke(context) is False
    assert not any(c[0] == "url" for c in hook.calls)


def test_poke_success_pushes_log_urls_and_returns_summary(context):
    hook = make_hook(job_body("Completed"))
    with mock.patch.object(links_module, "mask_secret") as mask:
        result = make_sensor(hook).poke(context)
    assert isinstance(result, PokeReturnValue)
    assert result.is_done
    value = result.xcom_value
    assert value["training_job_id"] == JOB
    assert value["phase"] == "Completed"
    assert value["tasks"] == ["worker-0", "worker-1"]
    assert set(value["log_urls"]) == {"worker-0", "worker-1"}
    entry = value["log_urls"]["worker-0"]
    assert entry["type"] == "preview"
    assert entry["expires_at"] == "2030-01-01T00:05:00+00:00"
    assert "Signature=SIG-worker-0" in entry["url"]
    assert pushed(context)["log_urls"] == value["log_urls"]
    masked = [c.args[0] for c in mask.call_args_list]
    assert entry["url"] in masked


def test_download_links(context):
    hook = make_hook(job_body("Completed", tasks=["worker-0"]))
    result = make_sensor(hook, log_url_type="download").poke(context)
    assert result.xcom_value["log_urls"]["worker-0"]["type"] == "download"
    assert ("url", "worker-0", True) in hook.calls


def test_push_log_urls_off(context):
    hook = make_hook(job_body("Completed"))
    result = make_sensor(hook, push_log_urls=False).poke(context)
    assert result.xcom_value["log_urls"] == {}
    assert "log_urls" not in pushed(context)


def test_failure_pushes_links_then_fails_with_task_details(context):
    statuses = [
        {"task": "worker-0", "exit_code": 0, "message": ""},
        {"task": "worker-1", "exit_code": 137, "message": "OOMKilled"},
    ]
    hook = make_hook(job_body("Failed", task_statuses=statuses))
    with pytest.raises(ModelArtsTrainingJobFailed) as info:
        make_sensor(hook).poke(context)
    error = info.value
    assert isinstance(error, AirflowFailException)
    assert isinstance(error, ModelArtsJobFailedError)
    assert error.training_job_id == JOB
    assert error.phase == "Failed"
    assert error.failed_tasks == [statuses[1]]
    text = str(error)
    assert JOB in text and "Failed" in text
    assert "worker-1: exit code 137, OOMKilled" in text
    assert "Signature" not in text
    assert set(pushed(context)["log_urls"]) == {"worker-0", "worker-1"}


def test_terminated_is_a_failure_by_default_and_configurable(context):
    with pytest.raises(ModelArtsTrainingJobFailed, match="Terminated"):
        make_sensor(make_hook(job_body("Terminated"))).poke(context)
    sensor = make_sensor(
        make_hook(job_body("Terminated")),
        success_phases=["Completed", "Terminated"],
        failure_phases=["Failed", "Abnormal"],
    )
    assert sensor.poke(context).xcom_value["phase"] == "Terminated"


def test_failure_still_raised_when_links_fail(context):
    hook = make_hook(job_body("Abnormal", secondary="CreateFailed"))
    hook.get_task_log_url = mock.Mock(side_effect=RuntimeError("no link"))
    with pytest.raises(ModelArtsTrainingJobFailed, match=r"Abnormal \(CreateFailed\)"):
        make_sensor(hook).poke(context)


def test_unknown_phase_is_a_clear_error(context):
    with pytest.raises(ModelArtsResponseError, match="Unknown training job phase 'Paused'"):
        make_sensor(make_hook(job_body("Paused"))).poke(context)


def test_execute_poke_mode_persists_console_link(context):
    sensor = make_sensor(make_hook(job_body("Completed")), poke_interval=0)
    result = sensor.execute(context)
    assert result["phase"] == "Completed"
    stored = pushed(context)[TRAINING_JOB_XCOM_KEY]
    assert stored["training_job_id"] == JOB
    assert stored["console_url"].endswith(JOB)


def test_deferrable_defers_when_running(context):
    sensor = make_sensor(make_hook(job_body("Running")), deferrable=True, poke_interval=7, timeout=600)
    with pytest.raises(TaskDeferred) as info:
        sensor.execute(context)
    trigger = info.value.trigger
    assert isinstance(trigger, ModelArtsTrainingJobTrigger)
    assert info.value.method_name == "execute_complete"
    _, kwargs = trigger.serialize()
    assert kwargs["training_job_id"] == JOB
    assert kwargs["poll_interval"] == 7
    assert kwargs["success_phases"] == ["Completed"]
    assert kwargs["failure_phases"] == ["Failed", "Abnormal", "Terminated"]
    assert kwargs["end_time"] is not None
    assert info.value.timeout > timedelta(seconds=600)
    assert "log_urls" not in pushed(context)


def test_deferrable_finishes_inline_when_already_terminal(context):
    hook = make_hook(job_body("Completed"))
    result = make_sensor(hook, deferrable=True).execute(context)
    assert result["phase"] == "Completed"
    assert "log_urls" in pushed(context)


@pytest.mark.parametrize(
    ("event", "error", "match"),
    [
        (None, AirflowException, "no event"),
        (
            {"status": "error", "training_job_id": JOB, "phase": None, "message": "404 job gone"},
            AirflowException,
            "404 job gone",
        ),
        (
            {"status": "timeout", "training_job_id": JOB, "phase": "Running", "message": "Timed out x"},
            AirflowFailException,
            "Timed out x",
        ),
    ],
)
def test_execute_complete_rejects_bad_events(context, event, error, match):
    with pytest.raises(error, match=match):
        make_sensor(make_hook(job_body("Running"))).execute_complete(context, event)


def test_execute_complete_success_fetches_links_at_the_end(context):
    hook = make_hook(job_body("Completed"))
    event = {"status": "success", "training_job_id": JOB, "phase": "Completed", "message": "ok"}
    result = make_sensor(hook).execute_complete(context, event)
    assert result["log_urls"]["worker-1"]["url"].startswith("http://obs.local/")
    assert hook.calls[0] == ("job", JOB)


def test_execute_complete_failed_event_raises(context):
    hook = make_hook(
        job_body("Failed", task_statuses=[{"task": "worker-0", "exit_code": 2, "message": "bad"}])
    )
    event = {"status": "failed", "training_job_id": JOB, "phase": "Failed", "message": "x"}
    with pytest.raises(ModelArtsTrainingJobFailed, match="exit code 2, bad"):
        make_sensor(hook).execute_complete(context, event)
    assert "log_urls" in pushed(context)


def test_bad_log_url_type(context):
    with pytest.raises(ValueError, match="log_url_type"):
        make_sensor(make_hook(job_body("Completed")), log_url_type="zip").execute(context)
