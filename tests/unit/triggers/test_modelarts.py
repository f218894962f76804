from __future__ import annotations

import asyncio
import importlib
import time

import httpx
import pytest

from airflow_provider_modelarts.exceptions import (
    ModelArtsApiError,
    ModelArtsAuthError,
    ModelArtsNotFoundError,
    ModelArtsResponseError,
)
from airflow_provider_modelarts.training_job import evaluate_training_job
from airflow_provider_modelarts.triggers import modelarts as trigger_module
from airflow_provider_modelarts.triggers.modelarts import (
    ModelArtsTrainingJobTrigger,
    shared_hooks,
)
from tests.fixtures.fake_hooks import fake_async_hook

JOB = "job-1"


def job_body(phase, **status):
    return {"metadata": {"id": JOB}, "status": {"phase": phase, **status}}


class AsyncHookScript:
    """Plays back a script of answers (dicts or exceptions) to get_training_job of the autospecced hook."""

    def __init__(self, script):
        self.script = list(script)
        self.calls = 0
        self.closed = False

    async def get_training_job(self, training_job_id):
        assert training_job_id == JOB
        self.calls += 1
        item = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        if isinstance(item, BaseException):
            raise item
        return item

    async def close(self):
        self.closed = True


@pytest.fixture
def fake_hook(monkeypatch):
    holder = {}

    def install(*script):
        hook = AsyncHookScript(script)
        holder["hook"] = hook
        fake = fake_async_hook(hook)
        monkeypatch.setattr(ModelArtsTrainingJobTrigger, "hook_factory", staticmethod(lambda conn_id: fake))
        return hook

    return install


async def collect(trigger, limit=5):
    events = []
    async for event in trigger.run():
        events.append(event.payload)
        if len(events) >= limit:
            break
    return events


def run(trigger):
    return asyncio.run(collect(trigger))


def test_serialize_round_trip():
    trigger = ModelArtsTrainingJobTrigger(
        training_job_id=JOB,
        modelarts_conn_id="my_conn",
        poll_interval=2,
        end_time=1234.5,
        success_phases=["Completed", "Terminated"],
        failure_phases=[],
    )
    classpath, kwargs = trigger.serialize()
    assert classpath == "airflow_provider_modelarts.triggers.modelarts.ModelArtsTrainingJobTrigger"
    assert kwargs == {
        "training_job_id": JOB,
        "modelarts_conn_id": "my_conn",
        "poll_interval": 2.0,
        "end_time": 1234.5,
        "success_phases": ["Completed", "Terminated"],
        "failure_phases": [],
        "stream_logs": False,
        "stream_log_tasks": None,
        "stream_max_bytes": 65536,
        "log_stream_state": None,
    }
    module_name, class_name = classpath.rsplit(".", 1)
    rebuilt = getattr(importlib.import_module(module_name), class_name)(**kwargs)
    assert rebuilt.serialize() == (classpath, kwargs)


def test_serialize_defaults_are_json_primitives():
    import json

    _, kwargs = ModelArtsTrainingJobTrigger(training_job_id=JOB).serialize()
    assert json.loads(json.dumps(kwargs)) == kwargs
    assert kwargs["success_phases"] == ["Completed"]
    assert kwargs["failure_phases"] == ["Failed", "Abnormal", "Terminated"]
    assert kwargs["end_time"] is None


def test_success_after_polling_yields_one_event(fake_hook):
    hook = fake_hook(job_body("Pending"), job_body("Running"), job_body("Completed"))
    events = run(ModelArtsTrainingJobTrigger(training_job_id=JOB, poll_interval=0))
    assert events == [
        {
            "status": "success",
            "training_job_id": JOB,
            "phase": "Completed",
            "message": f"Training job {JOB} reached phase Completed",
        }
    ]
    assert hook.calls == 3
    assert hook.closed
    assert len(shared_hooks) == 0


@pytest.mark.parametrize("phase", ["Failed", "Abnormal", "Terminated"])
def test_failure_phase_yields_failed(fake_hook, phase):
    fake_hook(job_body("Running"), job_body(phase))
    [event] = run(ModelArtsTrainingJobTrigger(training_job_id=JOB, poll_interval=0))
    assert event["status"] == "failed"
    assert event["phase"] == phase


def test_terminal_phases_as_success_like_the_archive_operator(fake_hook):
    fake_hook(job_body("Failed"))
    trigger = ModelArtsTrainingJobTrigger(
        training_job_id=JOB,
        poll_interval=0,
        success_phases=["Completed", "Failed", "Terminated", "Abnormal"],
        failure_phases=[],
    )
    [event] = run(trigger)
    assert event["status"] == "success"
    assert event["phase"] == "Failed"


def test_polls_through_throttling_5xx_and_network_errors(fake_hook):
    hook = fake_hook(
        ModelArtsApiError("throttled", status_code=429, error_code="APIG.0308"),
        ModelArtsApiError("busy", status_code=503, error_code="APIG.0203"),
        httpx.ConnectError("refused"),
        ModelArtsApiError("reset", status_code=None),
        TimeoutError(),
        job_body("Running"),
        job_body("Completed"),
    )
    [event] = run(ModelArtsTrainingJobTrigger(training_job_id=JOB, poll_interval=0))
    assert event["status"] == "success"
    assert hook.calls == 7


@pytest.mark.parametrize(
    "error",
    [
        ModelArtsNotFoundError("Training job job-1 not found", status_code=404, error_code="ModelArts.2775"),
        ModelArtsAuthError("bad signature", status_code=401, error_code="APIG.0301"),
        ModelArtsApiError("bad request", status_code=400, error_code="ModelArts.0104"),
        ModelArtsResponseError("not json", status_code=200),
    ],
)
def test_non_retryable_error_yields_error_event(fake_hook, error):
    hook = fake_hook(job_body("Running"), error)
    [event] = run(ModelArtsTrainingJobTrigger(training_job_id=JOB, poll_interval=0))
    assert event["status"] == "error"
    assert event["phase"] == "Running"
    assert str(error) in event["message"]
    assert JOB in event["message"]
    assert hook.calls == 2


def test_unknown_phase_is_an_error_not_a_silent_loop(fake_hook):
    fake_hook(job_body("Sleeping"))
    [event] = run(ModelArtsTrainingJobTrigger(training_job_id=JOB, poll_interval=0))
    assert event["status"] == "error"
    assert "Unknown training job phase 'Sleeping'" in event["message"]


def test_terminal_phase_outside_both_lists_is_an_error(fake_hook):
    fake_hook(job_body("Terminated"))
    trigger = ModelArtsTrainingJobTrigger(training_job_id=JOB, poll_interval=0, failure_phases=["Failed"])
    [event] = run(trigger)
    assert event["status"] == "error"
    assert "neither" in event["message"]


def test_timeout_event(fake_hook):
    fake_hook(job_body("Running"))
    trigger = ModelArtsTrainingJobTrigger(training_job_id=JOB, poll_interval=0.05, end_time=time.time() + 0.2)
    started = time.monotonic()
    [event] = run(trigger)
    assert event["status"] == "timeout"
    assert event["phase"] == "Running"
    assert time.monotonic() - started < 2


def test_retryable_errors_until_timeout_still_end_with_timeout(fake_hook):
    fake_hook(ModelArtsApiError("throttled", status_code=429))
    [event] = run(
        ModelArtsTrainingJobTrigger(training_job_id=JOB, poll_interval=0.01, end_time=time.time() + 0.1)
    )
    assert event["status"] == "timeout"


def test_hook_creation_failure_is_an_error_event(monkeypatch):
    def broken(conn_id):
        raise ValueError("connection modelarts_default has no project_id")

    monkeypatch.setattr(ModelArtsTrainingJobTrigger, "hook_factory", staticmethod(broken))
    [event] = run(ModelArtsTrainingJobTrigger(training_job_id=JOB))
    assert event["status"] == "error"
    assert "project_id" in event["message"]


def test_triggers_share_one_hook_per_loop_and_close_it(monkeypatch):
    created = []

    def factory(conn_id):
        hook = AsyncHookScript([job_body("Running"), job_body("Running"), job_body("Completed")])
        created.append(hook)
        return fake_async_hook(hook)

    monkeypatch.setattr(ModelArtsTrainingJobTrigger, "hook_factory", staticmethod(factory))

    async def main():
        triggers = [ModelArtsTrainingJobTrigger(training_job_id=JOB, poll_interval=0) for _ in range(20)]
        return await asyncio.gather(*(collect(t) for t in triggers))

    results = asyncio.run(main())
    assert all(r[0]["status"] == "success" for r in results)
    assert len(created) == 1
    assert created[0].closed
    assert len(shared_hooks) == 0


def test_cancelled_trigger_releases_the_hook(fake_hook):
    hook = fake_hook(job_body("Running"))

    async def main():
        task = asyncio.create_task(
            collect(ModelArtsTrainingJobTrigger(training_job_id=JOB, poll_interval=10))
        )
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert hook.closed
    assert len(shared_hooks) == 0


def test_poll_does_not_block_the_event_loop(fake_hook):
    fake_hook(job_body("Running"))

    async def main():
        gen = ModelArtsTrainingJobTrigger(training_job_id=JOB, poll_interval=0.2).run()
        task = asyncio.ensure_future(gen.__anext__())
        ticks = 0
        for _ in range(10):
            await asyncio.sleep(0.01)
            ticks += 1
        task.cancel()
        return ticks

    assert asyncio.run(main()) == 10


def test_evaluate_training_job_shared_check():
    kwargs = {"training_job_id": JOB, "success_phases": ["Completed"], "failure_phases": ["Failed"]}
    assert evaluate_training_job(job_body("Creating"), **kwargs).state == "running"
    assert evaluate_training_job(job_body("Terminating"), **kwargs).state == "running"
    assert evaluate_training_job(job_body("Completed"), **kwargs).is_done
    with pytest.raises(ModelArtsResponseError, match=r"no status\.phase"):
        evaluate_training_job({"status": {}}, **kwargs)


def test_default_hook_factory_uses_single_attempt(monkeypatch):
    seen = {}

    class Recorder:
        def __init__(self, conn_id, **kwargs):
            seen.update(conn_id=conn_id, **kwargs)

    monkeypatch.setattr(trigger_module, "ModelArtsAsyncHook", Recorder)
    trigger_module._default_hook_factory("c1")
    assert seen == {"conn_id": "c1", "max_retries": 0}


def test_polls_in_flight_are_capped(monkeypatch):
    state = {"now": 0, "max": 0}

    class SlowHook(AsyncHookScript):
        async def get_training_job(self, training_job_id):
            state["now"] += 1
            state["max"] = max(state["max"], state["now"])
            await asyncio.sleep(0.01)
            state["now"] -= 1
            return job_body("Completed")

    hook = fake_async_hook(SlowHook([]))
    monkeypatch.setattr(ModelArtsTrainingJobTrigger, "hook_factory", staticmethod(lambda conn_id: hook))
    monkeypatch.setattr(type(shared_hooks), "max_in_flight", 4)

    async def main():
        return await asyncio.gather(
            *(collect(ModelArtsTrainingJobTrigger(training_job_id=JOB)) for _ in range(30))
        )

    results = asyncio.run(main())
    assert all(r[0]["status"] == "success" for r in results)
    assert state["max"] == 4


def test_triggers_share_one_real_hook_and_its_client(monkeypatch):
    hooks = []

    class CountingHook(trigger_module.ModelArtsAsyncHook):
        def __init__(self, conn_id, **kwargs):
            super().__init__(conn_id, **kwargs)
            hooks.append(self)
            self.builds = 0

        def _build_client(self, config):
            self.builds += 1
            return super()._build_client(config)

    def handler(request):
        return httpx.Response(200, json=job_body("Completed"))

    monkeypatch.setenv(
        "AIRFLOW_CONN_MODELARTS_DEFAULT",
        '{"conn_type": "modelarts", "login": "AK", "password": "SK",'
        ' "extra": {"project_id": "p1", "endpoint": "http://127.0.0.1:9"}}',
    )
    monkeypatch.setattr(
        ModelArtsTrainingJobTrigger,
        "hook_factory",
        staticmethod(lambda conn_id: CountingHook(conn_id, transport=httpx.MockTransport(handler))),
    )

    async def main():
        return await asyncio.gather(
            *(collect(ModelArtsTrainingJobTrigger(training_job_id=JOB)) for _ in range(5))
        )

    results = asyncio.run(main())
    assert all(r[0]["status"] == "success" for r in results)
    assert len(hooks) == 1
    assert hooks[0].builds == 1
    assert len(shared_hooks) == 0
