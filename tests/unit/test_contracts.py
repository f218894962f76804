"""One contract for the public classes: keyword arguments, one error for bad arguments, one rule for events."""

from __future__ import annotations

from datetime import timedelta
from unittest import mock

import pytest
from airflow.providers.common.compat.sdk import AirflowFailException, TaskDeferred

from airflow_provider_modelarts.connection import DEFAULT_CONN_ID
from airflow_provider_modelarts.exceptions import (
    ModelArtsTriggerEventError,
    ModelArtsValidationError,
    ModelArtsWaitTimeoutError,
)
from airflow_provider_modelarts.notifications.modelarts import ModelArtsTaskLogsNotifier
from airflow_provider_modelarts.notifications.smn import SmnNotifier
from airflow_provider_modelarts.operators.modelarts import ModelArtsArchiveTaskLogsOperator
from airflow_provider_modelarts.sensors.modelarts import ModelArtsTrainingJobSensor
from airflow_provider_modelarts.triggers.completion import (
    DEFER_TIMEOUT_GRACE,
    validate_execute_complete_event,
)
from airflow_provider_modelarts.triggers.modelarts import (
    ModelArtsTrainingJobEventTrigger,
    ModelArtsTrainingJobTrigger,
)
from tests.fixtures.fake_hooks import fake_hook

JOB = "job-1"


class RunningJob:
    """What the (autospecced) hook answers: a job that is still running."""

    def get_training_job(self, training_job_id):
        return {"metadata": {"id": training_job_id}, "status": {"phase": "Running", "tasks": ["worker-0"]}}

    def console_url(self, training_job_id):
        return f"https://console.example/{training_job_id}"


def context():
    return {"ti": mock.MagicMock(), "task": None}


def operator(**kwargs):
    op = ModelArtsArchiveTaskLogsOperator(
        task_id="archive", training_job_id=JOB, destination="file:///tmp/unused", stream_logs=False, **kwargs
    )
    op.__dict__["hook"] = fake_hook(RunningJob())
    return op


def sensor(**kwargs):
    s = ModelArtsTrainingJobSensor(task_id="wait", training_job_id=JOB, stream_logs=False, **kwargs)
    s.__dict__["hook"] = fake_hook(RunningJob())
    return s


@pytest.mark.parametrize(
    ("event", "error"),
    [
        (None, ModelArtsTriggerEventError),
        ({}, ModelArtsTriggerEventError),
        ({"status": "error", "message": "401 APIG.0301"}, ModelArtsTriggerEventError),
        ({"status": "exploded"}, ModelArtsTriggerEventError),
        ({"status": "timeout", "message": "still Running"}, ModelArtsWaitTimeoutError),
    ],
)
def test_operator_and_sensor_raise_the_same_error_for_the_same_event(event, error):
    for waiter in (operator(), sensor()):
        with pytest.raises(error) as ei:
            waiter.execute_complete(context(), event)
        assert type(ei.value) is error, type(waiter).__name__
        waiter.hook.get_training_job.assert_not_called()


def test_a_timeout_event_fails_without_retries_and_names_the_job():
    with pytest.raises(AirflowFailException, match=JOB):
        validate_execute_complete_event({"status": "timeout"}, training_job_id=JOB)
    assert validate_execute_complete_event({"status": "success"}, training_job_id=JOB) == {
        "status": "success"
    }


def test_the_operator_defers_with_its_wait_deadline():
    with pytest.raises(TaskDeferred) as ei:
        operator(deferrable=True, timeout=600).execute(context())
    assert ei.value.timeout == timedelta(seconds=600) + DEFER_TIMEOUT_GRACE
    assert ei.value.trigger.end_time is not None


def test_the_sensor_defers_with_its_wait_deadline():
    with pytest.raises(TaskDeferred) as ei:
        sensor(deferrable=True, timeout=600).execute(context())
    assert ei.value.timeout == timedelta(seconds=600) + DEFER_TIMEOUT_GRACE


@pytest.mark.parametrize(
    "build",
    [
        lambda: ModelArtsTrainingJobTrigger(JOB),
        lambda: ModelArtsTrainingJobEventTrigger(DEFAULT_CONN_ID),
        lambda: ModelArtsTaskLogsNotifier(JOB),
        lambda: SmnNotifier("urn:smn:cn-north-4:p:topic"),
        lambda: ModelArtsTrainingJobSensor(JOB),
        lambda: ModelArtsArchiveTaskLogsOperator(JOB, "file:///tmp/x"),
    ],
)
def test_public_classes_take_keyword_arguments_only(build):
    with pytest.raises(TypeError):
        build()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"training_job_id": "../x"},
        {"training_job_id": JOB, "poll_interval": -1},
        {"training_job_id": JOB, "poll_interval": True},
        {"training_job_id": JOB, "modelarts_conn_id": ""},
        {"training_job_id": JOB, "end_time": "soon"},
        {"training_job_id": JOB, "success_phases": "Completed"},
        {"training_job_id": JOB, "stream_max_bytes": 1},
    ],
)
def test_trigger_refuses_bad_arguments(kwargs):
    with pytest.raises(ModelArtsValidationError):
        ModelArtsTrainingJobTrigger(**kwargs)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"training_job_id": ""},
        {"training_job_id": JOB, "notifier": "smtp"},
        {"training_job_id": JOB, "tail_lines": 9999},
        {"training_job_id": JOB, "tail_lines": "many"},
        {"training_job_id": JOB, "log_url_type": "zip"},
        {"training_job_id": JOB, "modelarts_conn_id": None},
    ],
)
def test_notifier_refuses_bad_arguments(kwargs):
    with pytest.raises(ModelArtsValidationError):
        ModelArtsTaskLogsNotifier(**kwargs)


def test_notifier_accepts_templates_for_templated_fields():
    n = ModelArtsTaskLogsNotifier(
        training_job_id="{{ params.job }}", tail_lines="{{ params.n }}", log_url_type="{{ x }}"
    )
    assert n.modelarts_conn_id == DEFAULT_CONN_ID


@pytest.mark.parametrize(
    "kwargs",
    [{"log_url_type": "zip"}, {"success_phases": "Completed"}, {"digest_tail_lines": -1}],
)
def test_sensor_refuses_bad_arguments_before_any_call(kwargs):
    s = sensor(**kwargs)
    with pytest.raises(ModelArtsValidationError):
        s.execute(context())
    s.hook.get_training_job.assert_not_called()
    s.hook.console_url.assert_not_called()


def test_validation_errors_are_value_errors():
    assert issubclass(ModelArtsValidationError, ValueError)
