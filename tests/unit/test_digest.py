"""The failure digest against the emulator: content, parts that fail or hang, the sensor's exception."""

from __future__ import annotations

import time

import pytest

from airflow_provider_modelarts.digest import FailureDigest, build_failure_digest
from airflow_provider_modelarts.exceptions import ModelArtsValidationError
from airflow_provider_modelarts.hooks.modelarts import ModelArtsHook
from airflow_provider_modelarts.notifications.modelarts import ModelArtsTaskLogsNotifier
from airflow_provider_modelarts.sensors.modelarts import (
    ModelArtsTrainingJobFailed,
    ModelArtsTrainingJobSensor,
)

FAILED_JOB = {
    "id": "job-broken",
    "timeline": [{"phase": "Running", "at": 0}, {"phase": "Failed", "at": 1}],
    "end_reason": "NPU process exited abnormally",
    "events": [
        {"at": 0.5, "level": "Warning", "source": "K8S", "message": "node npu-3 memory pressure"},
        {"at": 0.2, "level": "Info", "source": "Job", "message": "image pulled"},
    ],
    "tasks": [
        {"id": "worker-0", "exit_code": 0, "log": {"text": "all fine\n"}},
        {
            "id": "worker-1",
            "exit_code": 137,
            "message": "OOMKilled",
            "log": {"text": "".join(f"step {i}\n" for i in range(1, 41)) + "RuntimeError: out of memory\n"},
        },
    ],
}


@pytest.fixture
def failed_emu(emulator_factory, monkeypatch):
    emu = emulator_factory({"jobs": []})
    emu.add_job(FAILED_JOB)
    emu.advance(2)
    monkeypatch.setenv("AIRFLOW_CONN_MODELARTS_DEFAULT", emu.connection_json())
    return emu


def hook() -> ModelArtsHook:
    return ModelArtsHook(max_retries=0, request_timeout=5)


def test_digest_content(failed_emu):
    job = hook().get_training_job("job-broken")
    digest = build_failure_digest(job, training_job_id="job-broken", hook_factory=hook, tail_lines=3)
    assert digest.phase == "Failed" and digest.secondary_phase == "Failed"
    assert digest.failed_workers == [{"task": "worker-1", "exit_code": 137, "message": "OOMKilled"}]
    assert digest.end_reason == "NPU process exited abnormally"
    assert [e["level"] for e in digest.events] == ["Error", "Error", "Warning"]
    assert digest.events[0]["message"] == "Task worker-1 exited with code 137: OOMKilled"
    assert digest.events[-1]["message"] == "node npu-3 memory pressure"
    assert digest.log_tails == {"worker-1": ["step 39", "step 40", "RuntimeError: out of memory"]}
    assert digest.unavailable == {}
    text = digest.render()
    assert "phase Failed" in text and "Worker worker-1: exit code 137, OOMKilled" in text
    assert "  RuntimeError: out of memory" in text
    assert FailureDigest(**digest.to_dict()).render() == text


class _NoEvents(ModelArtsHook):
    def get_training_job_events(self, *args, **kwargs):
        raise RuntimeError("events service down")


class _SlowPreview(ModelArtsHook):
    def preview_task_log(self, *args, **kwargs):
        time.sleep(3)
        return super().preview_task_log(*args, **kwargs)


def test_a_failing_part_is_named_and_hides_nothing(failed_emu):
    job = hook().get_training_job("job-broken")
    digest = build_failure_digest(
        job, training_job_id="job-broken", hook_factory=lambda: _NoEvents(max_retries=0), tail_lines=2
    )
    assert digest.unavailable == {"events": "RuntimeError: events service down"}
    assert digest.log_tails["worker-1"][-1] == "RuntimeError: out of memory"
    assert "Not available: events: RuntimeError: events service down" in digest.render()


def test_a_hanging_part_does_not_delay_the_failure(failed_emu):
    job = hook().get_training_job("job-broken")
    started = time.monotonic()
    digest = build_failure_digest(
        job,
        training_job_id="job-broken",
        hook_factory=lambda: _SlowPreview(max_retries=0),
        tail_lines=2,
        deadline=0.5,
    )
    assert time.monotonic() - started < 2.5
    assert digest.unavailable == {"log tail of worker-1": "not fetched within 0.5 s"}
    assert len(digest.events) == 3


def test_no_network_part_when_the_connection_is_broken():
    job = {"status": {"phase": "Failed", "tasks": ["worker-0"], "task_statuses": [{"task": "worker-0"}]}}

    def broken() -> ModelArtsHook:
        raise ValueError("no such connection")

    digest = build_failure_digest(job, training_job_id="j", hook_factory=broken)
    assert digest.unavailable == {"events and log tails": "ValueError: no such connection"}
    with pytest.raises(ModelArtsValidationError):
        build_failure_digest(job, training_job_id="j", hook_factory=broken, tail_lines=-1)


def test_sensor_failure_carries_the_digest(failed_emu):
    sensor = ModelArtsTrainingJobSensor(
        task_id="wait", training_job_id="job-broken", push_log_urls=False, digest_tail_lines=1
    )
    with pytest.raises(ModelArtsTrainingJobFailed) as info:
        sensor.poke({})
    err = info.value
    assert err.digest["failed_workers"][0]["exit_code"] == 137
    assert err.end_reason == "NPU process exited abnormally"
    assert err.events[0]["level"] == "Error"
    assert "Last 1 log lines of worker-1:\n  RuntimeError: out of memory" in str(err)
    notifier = ModelArtsTaskLogsNotifier(training_job_id="job-broken", tail_lines=2)
    context = {"exception": err}
    notifier.notify(context)  # type: ignore[arg-type]
    assert context["modelarts"]["digest"] == err.digest
    assert "End reason: NPU process exited abnormally" in context["modelarts"]["summary"]


def test_notifier_builds_a_digest_without_an_exception(failed_emu):
    notifier = ModelArtsTaskLogsNotifier(training_job_id="job-broken", tail_lines=2)
    context: dict = {}
    notifier.notify(context)  # type: ignore[arg-type]
    digest = context["modelarts"]["digest"]
    assert digest["log_tails"]["worker-1"] == ["step 40", "RuntimeError: out of memory"]
    assert digest["end_reason"] == "NPU process exited abnormally"
