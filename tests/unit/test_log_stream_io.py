"""The sync and async log streamers over real HTTP against the emulator (its clock moved by hand)."""

from __future__ import annotations

import asyncio
import json
import re

import pytest

from airflow_provider_modelarts.exceptions import ModelArtsValidationError
from airflow_provider_modelarts.hooks.modelarts import ModelArtsAsyncHook, ModelArtsHook
from airflow_provider_modelarts.log_stream import (
    AsyncLogStreamer,
    ContextLogStream,
    LogStreamer,
    LogStreamState,
)
from airflow_provider_modelarts.operators.modelarts import ModelArtsArchiveTaskLogsOperator
from airflow_provider_modelarts.sensors.modelarts import ModelArtsTrainingJobSensor

COUNT = 60


def job(job_id: str = "job-live", **lines: object) -> dict:
    spec = {"count": COUNT, "every": 0.2, "template": "step {n:05d}", **lines}
    return {
        "id": job_id,
        "timeline": [{"phase": "Running", "at": 0}, {"phase": "Completed", "at": COUNT * 0.2 + 0.1}],
        "tasks": [{"id": "worker-0", "log": {"lines": spec}}, {"id": "worker-1", "log": {"lines": spec}}],
    }


def numbers(lines: list[str], worker: str = "worker-0") -> list[int]:
    return [int(m) for m in re.findall(rf"^\[{worker}\] (?:.* )?step (\d{{5}})", "\n".join(lines), re.M)]


def run_sync(emu, streamer: LogStreamer, hook: ModelArtsHook, step: float) -> None:
    while True:
        body = hook.get_training_job("job-live")
        done = body["status"]["phase"] == "Completed"
        streamer.poll(body, final=done)
        if done:
            return
        emu.advance(step)


@pytest.mark.parametrize(("refuse", "ignore_range"), [(False, False), (True, False), (False, True)])
def test_sync_streamer_shows_each_line_once(emulator_factory, monkeypatch, refuse, ignore_range):
    emu = emulator_factory({"jobs": []})
    emu.knobs.refuse_log_url = refuse
    emu.knobs.ignore_range = ignore_range  # a server that answers Range with the whole object
    emu.add_job(job())
    monkeypatch.setenv("AIRFLOW_CONN_MODELARTS_DEFAULT", emu.connection_json())
    hook = ModelArtsHook(max_retries=0)
    lines: list[str] = []
    streamer = LogStreamer(
        hook=hook,
        training_job_id="job-live",
        state=None,
        stream_log_tasks=["worker-0", "worker-1"],
        max_bytes=65536,
        emit=lines.append,
        clock=emu.now,
    )
    run_sync(emu, streamer, hook, 0.33)
    assert numbers(lines) == list(range(1, COUNT + 1))
    assert numbers(lines, "worker-1") == list(range(1, COUNT + 1))
    if refuse:
        assert emu.counters["obs_get"] == 0
        assert sum("preview API" in line for line in lines) == 1
    else:
        assert emu.counters["preview"] == 0


def test_links_are_reused_until_shortly_before_they_expire(emulator_factory, monkeypatch):
    emu = emulator_factory({"jobs": []})
    emu.add_job(
        {
            "id": "job-live",
            "timeline": [{"phase": "Running", "at": 0}, {"phase": "Completed", "at": 3600}],
            "tasks": [{"id": "worker-0", "log": {"lines": {"count": 2000, "every": 1.0}}}],
        }
    )
    monkeypatch.setenv("AIRFLOW_CONN_MODELARTS_DEFAULT", emu.connection_json())
    hook = ModelArtsHook(max_retries=0)
    lines: list[str] = []
    streamer = LogStreamer(
        hook=hook,
        training_job_id="job-live",
        state=None,
        stream_log_tasks=None,
        max_bytes=65536,
        emit=lines.append,
        clock=emu.now,
    )
    emu.reset_counters()
    for _ in range(60):  # 30 minutes of 30 s polls
        streamer.poll(hook.get_training_job("job-live"))
        emu.advance(30)
    assert emu.counters["obs_get"] == 60
    assert 6 <= emu.counters["log_url"] <= 8  # one link per ~4.5 minutes, never an expired one
    assert not any("not read" in line for line in lines)
    shown = [int(m) for m in re.findall(r"line (\d{5})", "\n".join(lines))]
    assert shown == list(range(1, len(shown) + 1)) and len(shown) > 1700


def test_progress_bars_and_invalid_bytes_from_the_emulator(emulator_factory, monkeypatch):
    emu = emulator_factory({"jobs": []})
    emu.add_job(job(progress=True, invalid_utf8=True))
    monkeypatch.setenv("AIRFLOW_CONN_MODELARTS_DEFAULT", emu.connection_json())
    hook = ModelArtsHook(max_retries=0)
    lines: list[str] = []
    streamer = LogStreamer(
        hook=hook,
        training_job_id="job-live",
        state=None,
        stream_log_tasks=["worker-0"],
        max_bytes=65536,
        emit=lines.append,
        clock=emu.now,
    )
    run_sync(emu, streamer, hook, 0.5)
    assert numbers(lines) == list(range(1, COUNT + 1))
    assert "[worker-0] progress 100% step 00010" in lines
    assert "[worker-0] step 00025 bad-bytes:\ufffd\ufffd" in lines
    assert not any("\r" in line for line in lines)


@pytest.mark.parametrize(("refuse", "ignore_range"), [(False, False), (True, False), (False, True)])
def test_async_streamer_resumes_from_a_serialised_state(emulator_factory, monkeypatch, refuse, ignore_range):
    emu = emulator_factory({"jobs": []})
    emu.knobs.refuse_log_url = refuse
    emu.knobs.ignore_range = ignore_range
    emu.add_job(job())
    monkeypatch.setenv("AIRFLOW_CONN_MODELARTS_DEFAULT", emu.connection_json())
    lines: list[str] = []

    async def run() -> None:
        state: dict | None = None
        done = False
        while not done:
            hook = ModelArtsAsyncHook(max_retries=0)
            # A new streamer per poll, from the JSON state: as a trigger rebuilt from its kwargs.
            streamer = AsyncLogStreamer(
                hook=hook,
                training_job_id="job-live",
                state=state,
                stream_log_tasks=["worker-0"],
                max_bytes=65536,
                emit=lines.append,
                clock=emu.now,
            )
            body = await hook.get_training_job("job-live")
            done = body["status"]["phase"] == "Completed"
            await streamer.poll(body, final=done)
            state = json.loads(json.dumps(streamer.state.to_dict()))
            await hook.close()
            emu.advance(0.45)

    asyncio.run(run())
    assert numbers(lines) == list(range(1, COUNT + 1))
    assert not any("not read" in line for line in lines)
    assert (emu.counters["obs_get"] == 0) is refuse


def test_without_a_store_a_fresh_process_starts_at_the_tail_and_says_so(emulator_factory, monkeypatch):
    emu = emulator_factory({"jobs": []})
    emu.add_job(job())
    monkeypatch.setenv("AIRFLOW_CONN_MODELARTS_DEFAULT", emu.connection_json())
    hook = ModelArtsHook(max_retries=0)
    emu.advance(COUNT * 0.2 * 0.9)
    lines: list[str] = []
    LogStreamer(
        hook=hook,
        training_job_id="job-live",
        state=None,
        stream_log_tasks=["worker-0"],
        max_bytes=200,
        emit=lines.append,
        start_at_tail=True,
        clock=emu.now,
    ).poll(hook.get_training_job("job-live"))
    assert "no saved log position" in lines[0]
    shown = numbers(lines)
    assert 0 < len(shown) <= 200 // len("step 00001\n") and shown == list(range(shown[0], shown[-1] + 1))
    assert shown[0] > 1


@pytest.mark.parametrize(
    "kwargs", [{"stream_logs": 1}, {"stream_log_tasks": "worker-0"}, {"stream_max_bytes": 0}]
)
def test_operators_reject_bad_stream_arguments_before_any_request(kwargs):
    sensor = ModelArtsTrainingJobSensor(task_id="s", training_job_id="j", **kwargs)
    with pytest.raises(ModelArtsValidationError):
        sensor.execute({})
    operator = ModelArtsArchiveTaskLogsOperator(
        task_id="a", training_job_id="j", destination="file:///tmp/x", **kwargs
    )
    with pytest.raises(ModelArtsValidationError):
        operator.execute({})


def test_state_round_trips_through_json():
    state = LogStreamState()
    state.apply_range("worker-0", b"a\nb", start=0, total=3, max_bytes=100, where="x")
    assert LogStreamState.from_dict(state.to_dict()).cursors["worker-0"].pending == b"b"


class _Store:
    """Stands in for ``context["task_state_store"]``: JSON values by key."""

    def __init__(self) -> None:
        self.values: dict[str, str] = {}

    def get(self, key, default=None):
        return json.loads(self.values[key]) if key in self.values else default

    def set(self, key, value, **kwargs):
        self.values[key] = json.dumps(value)


@pytest.mark.parametrize("with_store", [True, False])
def test_reschedule_pokes_resume_from_the_store_or_mark_the_repeat(emulator_factory, monkeypatch, with_store):
    emu = emulator_factory({"jobs": []})
    emu.add_job(job())
    monkeypatch.setenv("AIRFLOW_CONN_MODELARTS_DEFAULT", emu.connection_json())
    store = _Store()
    context = {"task_state_store": store} if with_store else {}
    lines: list[str] = []
    done = False
    while not done:
        # Each reschedule poke is a new process: a new ContextLogStream with nothing in memory.
        hook = ModelArtsHook(max_retries=0)
        body = hook.get_training_job("job-live")
        done = body["status"]["phase"] == "Completed"
        ContextLogStream(
            hook=hook,
            training_job_id="job-live",
            stream_log_tasks=["worker-0"],
            max_bytes=2048,
            emit=lines.append,
            fresh_process_per_poll=True,
        ).poll(context, body, final=done)
        emu.advance(1.3)
    if with_store:
        assert numbers(lines) == list(range(1, COUNT + 1))
        assert list(store.values) == ["modelarts_log_stream:job-live"]
    else:
        markers = [line for line in lines if "no saved log position" in line]
        assert len(markers) >= 5  # one per poke: every repeat is announced
        assert set(numbers(lines)) == set(range(1, COUNT + 1))  # nothing lost
        assert len(numbers(lines)) > COUNT  # but lines repeat, bounded by one poke's window


def test_nothing_is_read_before_the_job_runs(emulator_factory, monkeypatch):
    emu = emulator_factory({"jobs": []})
    emu.add_job({**job(), "timeline": [{"phase": "Pending", "at": 0}, {"phase": "Running", "at": 100}]})
    monkeypatch.setenv("AIRFLOW_CONN_MODELARTS_DEFAULT", emu.connection_json())
    hook = ModelArtsHook(max_retries=0)
    lines: list[str] = []
    streamer = LogStreamer(
        hook=hook,
        training_job_id="job-live",
        state=None,
        stream_log_tasks=None,
        max_bytes=65536,
        emit=lines.append,
    )
    emu.reset_counters()
    streamer.poll(hook.get_training_job("job-live"))
    assert lines == [] and emu.counters["log_url"] == 0 and emu.counters["obs_get"] == 0
