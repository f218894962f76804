"""ModelArtsTrainingJobEventTrigger over real HTTP against the emulator: jobs created and finishing while
the watcher runs are each emitted once, with validated payloads; the search is paged as documented."""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest

from airflow_provider_modelarts.triggers import events
from airflow_provider_modelarts.triggers.modelarts import ModelArtsTrainingJobEventTrigger

pytestmark = pytest.mark.integration


class Store:
    def __init__(self):
        self.data = {}

    async def aget(self, key, default=None):
        return self.data.get(key, default)

    async def aset(self, key, value):
        self.data[key] = value


async def _watch(trigger, seconds, out):
    async def consume():
        async for event in trigger.run():
            out.append(event.payload)

    task = asyncio.ensure_future(consume())
    await asyncio.sleep(seconds)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def test_jobs_finishing_while_the_watcher_runs_each_give_one_event(emulator_factory, monkeypatch):
    emu = emulator_factory({"jobs": []})
    monkeypatch.setenv("AIRFLOW_CONN_MODELARTS_DEFAULT", emu.connection_json())
    events._MEMORY_STATES.clear()
    for i in range(60):  # history: finished before the watcher starts, more than one page
        emu.add_job({"id": f"hist-{i:02d}", "timeline": [{"phase": "Completed", "at": 0}]})
    emu.add_job({"id": "long", "timeline": [{"phase": "Running", "at": 0}, {"phase": "Failed", "at": 4}]})
    time.sleep(0.3)  # the emulator spaces create times 1 ms per job: let them all pass
    store = Store()
    out: list[dict] = []

    def trigger():
        t = ModelArtsTrainingJobEventTrigger(poll_interval=0.3)
        t.asset_state_store = store
        return t

    first = trigger()
    for i in range(6):  # created now and later, finishing over the next seconds
        emu.add_job(
            {
                "id": f"new-{i}",
                "name": f"new-job-{i}",
                "created_at": i * 0.5,
                "timeline": [{"phase": "Running", "at": i * 0.5}, {"phase": "Completed", "at": i * 0.5 + 1}],
                "tasks": ["worker-0", "worker-1"],
            }
        )
    asyncio.run(_watch(first, 2.5, out))
    # A restart with the stored state: the rest arrive, nothing twice.
    asyncio.run(_watch(trigger(), 4.5, out))
    got = [e["training_job_id"] for e in out]
    assert sorted(got) == sorted(["long", *(f"new-{i}" for i in range(6))]), got
    new0 = next(e for e in out if e["training_job_id"] == "new-0")
    assert new0["name"] == "new-job-0" and new0["phase"] == "Completed"
    assert new0["tasks"] == ["worker-0", "worker-1"]
    assert new0["end_time"] > new0["create_time"]
    assert next(e for e in out if e["training_job_id"] == "long")["phase"] == "Failed"
