"""ModelArtsTrainingJobEventTrigger: paging, watermark, exactly-once across re-listing, phase changes,
restarts and API errors, against an in-memory job search that pages like the documented API."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import pytest

from airflow_provider_modelarts.exceptions import (
    ModelArtsApiError,
    ModelArtsAuthError,
    ModelArtsConfigError,
    ModelArtsNotFoundError,
    ModelArtsTransportError,
    ModelArtsValidationError,
)
from airflow_provider_modelarts.triggers import events
from airflow_provider_modelarts.triggers.events import (
    MAX_TASKS,
    ModelArtsTrainingJobEventTrigger,
    WatcherState,
    _Poller,
    parse_listed_job,
)
from airflow_provider_modelarts.triggers.modelarts import (
    ModelArtsTrainingJobEventTrigger as ReExported,
)

NOW_MS = 1_700_000_000_000
TERMINAL = ("Completed", "Failed", "Terminated", "Abnormal")


def body(job_id, created, phase, *, end=None, tasks=("worker-0",), name=None):
    status = {"phase": phase, "tasks": list(tasks), "start_time": 0, "duration": 0}
    if end is not None:
        status.update(start_time=created + 1, duration=end - created - 1)
    return {"metadata": {"id": job_id, "name": name or job_id, "create_time": created}, "status": status}


class FakeSearchApi:
    """``search_training_jobs``/``get_training_job`` over a dict of job bodies, paged like the API
    (``offset`` is the page index; ``phase in``, ``name like`` and ``create_time between`` filters)."""

    def __init__(self):
        self.jobs: dict[str, dict] = {}
        self.searches = 0
        self.gets = 0
        self.failures: list[BaseException] = []
        self.after_page = None  # called with the page number after each search page is cut
        self.closed = False

    def add(self, job_id, created, phase, **kw):
        self.jobs[job_id] = body(job_id, created, phase, **kw)

    def set_phase(self, job_id, phase, end=None):
        job = self.jobs[job_id]
        job["status"]["phase"] = phase
        if end is not None:
            created = job["metadata"]["create_time"]
            job["status"].update(start_time=created + 1, duration=end - created - 1)

    def _fail(self):
        if self.failures:
            raise self.failures.pop(0)

    async def search_training_jobs(
        self, *, filters=None, offset=0, limit=50, sort_by="create_time", order="desc"
    ):
        self._fail()
        self.searches += 1
        rows = list(self.jobs.values())
        for flt in filters or []:
            rows = [r for r in rows if self._match(flt, r)]
        rows.sort(key=lambda r: (r["metadata"]["create_time"], r["metadata"]["id"]), reverse=order == "desc")
        page = rows[offset * limit : (offset + 1) * limit]
        items = [dict(r, status=dict(r["status"] or {})) for r in page]
        if self.after_page is not None:
            self.after_page(self.searches)
        return {"total": len(rows), "items": items}

    @staticmethod
    def _match(flt, row):
        if not isinstance(row.get("status"), dict) or row["status"].get("phase") is None:
            return True  # a broken record: an untrusted server may list it whatever the filters say
        if flt["key"] == "phase":
            return row["status"]["phase"] in flt["value"]
        if flt["key"] == "name":
            return flt["value"][0].lower() in row["metadata"]["name"].lower()
        low, high = (int(v) for v in flt["value"])
        return low <= row["metadata"]["create_time"] <= high

    async def get_training_job(self, job_id):
        self._fail()
        self.gets += 1
        if job_id not in self.jobs:
            raise ModelArtsNotFoundError("not found", status_code=404, error_code="ModelArts.2775")
        return self.jobs[job_id]

    async def close(self):
        self.closed = True


def poller(api, phases=TERMINAL, name_filter=None):
    return _Poller(api, phases=list(phases), name_filter=name_filter, log=logging.getLogger("test"))


def poll(p, state, now=NOW_MS):
    return [job.id for job in asyncio.run(p.poll(state, now))]


# ------------------------------------------------------------------ arguments and payload


def test_reexported_and_round_trips():
    assert ReExported is ModelArtsTrainingJobEventTrigger
    trigger = ModelArtsTrainingJobEventTrigger(
        modelarts_conn_id="c",
        poll_interval=5,
        phases=["Failed"],
        name_filter="bert",
        since="2024-01-01T00:00:00Z",
    )
    classpath, kwargs = trigger.serialize()
    assert classpath == "airflow_provider_modelarts.triggers.modelarts.ModelArtsTrainingJobEventTrigger"
    rebuilt = ModelArtsTrainingJobEventTrigger(**kwargs)
    assert rebuilt.serialize() == (classpath, kwargs)
    assert kwargs["since"] == 1704067200.0
    assert rebuilt.state_key == trigger.state_key
    assert ModelArtsTrainingJobEventTrigger(modelarts_conn_id="other").state_key != trigger.state_key


@pytest.mark.parametrize(
    "kwargs",
    [
        {"modelarts_conn_id": ""},
        {"poll_interval": 0},
        {"poll_interval": float("nan")},
        {"poll_interval": True},
        {"phases": []},
        {"phases": ["Running"]},
        {"phases": "Completed"},
        {"phases": ["Failed", "Failed"]},
        {"name_filter": "a/b"},
        {"name_filter": "x" * 65},
        {"since": "yesterday"},
        {"since": -1},
        {"since": float("inf")},
        {"since": [1]},
    ],
)
def test_bad_arguments_are_rejected_at_construction(kwargs):
    with pytest.raises(ModelArtsValidationError):
        ModelArtsTrainingJobEventTrigger(**kwargs)


def test_arguments_are_keyword_only():
    with pytest.raises(TypeError):
        ModelArtsTrainingJobEventTrigger("modelarts_default")  # type: ignore[misc]


def test_payload_validates_untrusted_values():
    item = body("job-1", NOW_MS, "Failed", end=NOW_MS + 5000, name="n\x00", tasks=("worker-0", "../x", None))
    item["status"]["tasks"] += [f"w-{i}" for i in range(MAX_TASKS + 10)]
    payload = parse_listed_job(item).payload()
    assert payload["training_job_id"] == "job-1"
    assert payload["name"] is None
    assert payload["phase"] == "Failed"
    assert payload["create_time"] == "2023-11-14T22:13:20.000+00:00"
    assert payload["end_time"] == "2023-11-14T22:13:25.000+00:00"
    assert payload["tasks"][0] == "worker-0" and "../x" not in payload["tasks"]
    assert len(payload["tasks"]) <= MAX_TASKS


def test_end_time_prefers_the_last_running_record():
    item = body("j", NOW_MS, "Completed", end=NOW_MS + 9000)
    item["status"]["running_records"] = [{"start_at": NOW_MS // 1000, "end_at": NOW_MS // 1000 + 3}]
    assert parse_listed_job(item).end_time_ms == NOW_MS + 3000
    item["status"]["running_records"] = [{"end_at": 10**15}]  # bogus: fall back to start + duration
    assert parse_listed_job(item).end_time_ms == NOW_MS + 9000
    never_started = body("k", NOW_MS, "Abnormal")
    assert parse_listed_job(never_started).payload()["end_time"] is None


@pytest.mark.parametrize(
    "item",
    [
        None,
        {},
        {"metadata": None, "status": {}},
        body("a/b", NOW_MS, "Completed"),
        body("", NOW_MS, "Completed"),
        body("ok", NOW_MS, "Exploded"),
        body("ok", -5, "Completed"),
        body("ok", 10**16, "Completed"),
        body("ok", "1700000000000", "Completed"),
        body("ok", True, "Completed"),
    ],
)
def test_unreadable_listed_jobs_are_rejected(item):
    with pytest.raises(ModelArtsApiError):
        parse_listed_job(item)


def test_unreadable_items_are_skipped_not_fatal():
    api = FakeSearchApi()
    api.add("good", NOW_MS + 10, "Completed", end=NOW_MS + 20)
    api.jobs["bad-phase"] = body("bad-phase", NOW_MS + 11, "Completed")
    api.jobs["bad-phase"]["status"]["phase"] = None
    api.jobs["bad-id"] = body("x/../y", NOW_MS + 12, "Completed")
    api.jobs["bad-status"] = {"metadata": {"id": "s", "create_time": NOW_MS + 13}, "status": None}
    state = WatcherState(since_ms=NOW_MS)
    assert poll(poller(api), state, NOW_MS + 100) == ["good"]


# ------------------------------------------------------------------ paging and the watermark


def test_first_poll_skips_history_and_emits_each_new_finish_once():
    api = FakeSearchApi()
    for i in range(30):  # finished before the watcher started
        api.add(f"old-{i}", NOW_MS - 3_600_000 + i, "Completed", end=NOW_MS - 1_000_000)
    api.add("recent-history", NOW_MS - 10_000, "Failed", end=NOW_MS - 5_000)
    state = WatcherState(since_ms=NOW_MS)
    p = poller(api)
    assert poll(p, state) == []
    for i in range(120):  # many finish within one poll: three pages
        api.add(f"new-{i:03d}", NOW_MS + 1_000 + i, "Completed", end=NOW_MS + 50_000 + i)
    emitted = poll(p, state, NOW_MS + 60_000)
    assert emitted == [f"new-{i:03d}" for i in range(120)]
    assert poll(p, state, NOW_MS + 120_000) == []


def test_watermark_bounds_the_relisting():
    api = FakeSearchApi()
    for i in range(500):  # one job every 10 s
        api.add(f"job-{i:03d}", NOW_MS + i * 10_000, "Completed", end=NOW_MS + i * 10_000 + 500)
    state = WatcherState(since_ms=NOW_MS - 1)
    p = poller(api)
    assert len(poll(p, state, NOW_MS + 6_000_000)) == 500
    assert state.watermark_ms == NOW_MS + 4_990_000 - events.VISIBILITY_LAG_MS
    assert len(state.handled) == 7  # only the jobs within the visibility lag of the newest
    api.searches = 0
    assert poll(p, state, NOW_MS + 7_000_000) == []
    assert api.searches == 1  # one page: the jobs created within the lag, not the 500


def test_relisted_jobs_are_not_repeated():
    api = FakeSearchApi()
    api.add("a", NOW_MS + 1, "Completed", end=NOW_MS + 2)
    api.add("b", NOW_MS + 1, "Failed", end=NOW_MS + 3)  # same create time
    state = WatcherState(since_ms=NOW_MS)
    p = poller(api)
    assert poll(p, state, NOW_MS + 10) == ["a", "b"]
    for _ in range(3):
        assert poll(p, state, NOW_MS + 20) == []  # both are listed again (within the lag), never re-emitted


def test_phase_change_after_emission_is_not_a_second_event():
    api = FakeSearchApi()
    api.add("j", NOW_MS + 1, "Failed", end=NOW_MS + 5)
    state = WatcherState(since_ms=NOW_MS)
    p = poller(api)
    assert poll(p, state, NOW_MS + 10) == ["j"]
    api.set_phase("j", "Terminated")
    assert poll(p, state, NOW_MS + 20) == []
    api.set_phase("j", "Completed")
    assert poll(p, state, NOW_MS + 30) == []


def test_a_page_boundary_moving_while_paging_loses_no_job():
    api = FakeSearchApi()
    for i in range(149):
        api.add(f"r-{i:03d}", NOW_MS + 100 + i, "Running")
    state = WatcherState(since_ms=NOW_MS)
    p = poller(api, phases=["Completed"])
    assert poll(p, state, NOW_MS + 1_000) == []

    def shift(page_number):
        if page_number == 1:  # after the first page: 10 jobs of that page leave the result set
            for i in range(10):
                api.set_phase(f"r-{i:03d}", "Failed", end=NOW_MS + 2_000)  # not a watched phase
        api.after_page = None

    for i in range(10, 149):
        api.set_phase(f"r-{i:03d}", "Completed", end=NOW_MS + 2_000 + i)
    api.searches = 0
    api.after_page = shift
    emitted = poll(p, state, NOW_MS + 3_000)
    assert sorted(emitted) == [f"r-{i:03d}" for i in range(10, 149)]


def test_offset_paging_inside_a_group_of_equal_create_times():
    api = FakeSearchApi()
    for i in range(130):  # more than two pages with one create time
        api.add(f"same-{i:03d}", NOW_MS + 5, "Completed", end=NOW_MS + 6)
    api.add("later", NOW_MS + 7, "Completed", end=NOW_MS + 8)
    state = WatcherState(since_ms=NOW_MS)
    emitted = poll(poller(api), state, NOW_MS + 100)
    assert sorted(emitted) == sorted([f"same-{i:03d}" for i in range(130)] + ["later"])


def test_a_server_that_never_ends_a_listing_is_bounded(monkeypatch):
    monkeypatch.setattr(events, "MAX_PAGES_PER_SCAN", 5)

    class Endless(FakeSearchApi):
        async def search_training_jobs(self, **kwargs):
            self.searches += 1
            return {"total": 10**12, "items": [body("same", NOW_MS + 1, "Running")] * 50}

    api = Endless()
    state = WatcherState(since_ms=NOW_MS)
    assert poll(poller(api), state, NOW_MS + 10) == []
    assert api.searches <= 10
    assert state.pending == {"same": NOW_MS + 1}


def test_name_filter_is_sent_to_the_search():
    api = FakeSearchApi()
    api.add("bert-1", NOW_MS + 1, "Completed", end=NOW_MS + 2)
    api.add("gpt-1", NOW_MS + 1, "Completed", end=NOW_MS + 2)
    assert poll(poller(api, name_filter="BERT"), WatcherState(since_ms=NOW_MS), NOW_MS + 10) == ["bert-1"]


# ------------------------------------------------------------------ jobs that run across polls


def test_a_long_running_job_is_followed_after_the_watermark_passes_it():
    api = FakeSearchApi()
    api.add("long", NOW_MS - 86_400_000, "Running")  # started a day before the watcher
    state = WatcherState(since_ms=NOW_MS)
    p = poller(api)
    assert poll(p, state) == []
    assert "long" in state.pending
    for i in range(100):  # one every 10 s
        api.add(
            f"short-{i}", NOW_MS + 100_000 + i * 10_000, "Completed", end=NOW_MS + 100_000 + i * 10_000 + 1
        )
    assert len(poll(p, state, NOW_MS + 2_000_000)) == 100
    api.searches = api.gets = 0
    assert poll(p, state, NOW_MS + 2_060_000) == []
    assert (api.searches, api.gets) == (2, 0)  # new jobs + the running list; no re-list of the 100
    api.set_phase("long", "Completed", end=NOW_MS + 2_070_000)
    assert poll(p, state, NOW_MS + 2_100_000) == ["long"]
    assert api.gets == 1 and "long" not in state.pending
    assert poll(p, state, NOW_MS + 2_200_000) == []


def test_a_pending_job_that_ends_in_an_unwatched_phase_or_is_deleted_is_dropped():
    api = FakeSearchApi()
    api.add("p1", NOW_MS - 10_000_000, "Running")
    api.add("p2", NOW_MS - 10_000_000 + 1, "Pending")
    state = WatcherState(since_ms=NOW_MS)
    p = poller(api, phases=["Completed"])
    poll(p, state)
    api.set_phase("p1", "Failed", end=NOW_MS + 10)
    del api.jobs["p2"]
    assert poll(p, state, NOW_MS + 100) == []
    assert state.pending == {}


def test_a_job_created_and_finished_between_polls():
    api = FakeSearchApi()
    state = WatcherState(since_ms=NOW_MS)
    p = poller(api)
    poll(p, state)
    api.add("quick", NOW_MS + 500, "Running")
    assert poll(p, state, NOW_MS + 1_000) == []
    api.set_phase("quick", "Abnormal")
    assert poll(p, state, NOW_MS + 2_000) == ["quick"]  # seen running: emitted even without an end time


# ------------------------------------------------------------------ the trigger: state, restarts, errors


@pytest.fixture(autouse=True)
def _info_logs(caplog):
    caplog.set_level(logging.INFO)


def logged(capsys, caplog):
    """What the trigger logged: Airflow 3.3's structlog writes to stdout/stderr, older ones use logging."""
    captured = capsys.readouterr()
    return captured.out + captured.err + caplog.text


class FakeStore:
    """The asset state store accessor's async API (``aget``/``aset``) over a dict."""

    def __init__(self):
        self.data: dict = {}
        self.writes = 0

    async def aget(self, key, default=None):
        return self.data.get(key, default)

    async def aset(self, key, value):
        await asyncio.sleep(0)  # a real write awaits the supervisor: a point where cancellation can land
        self.writes += 1
        self.data[key] = value


@pytest.fixture
def api(monkeypatch):
    fake = FakeSearchApi()
    monkeypatch.setattr(ModelArtsTrainingJobEventTrigger, "hook_factory", staticmethod(lambda conn_id: fake))
    events._MEMORY_STATES.clear()
    return fake


async def _run_until(trigger, count, *, timeout=5.0):
    """Run the trigger as the triggerer does (a task) and cancel it once ``count`` events arrived."""
    out: list[str] = []
    enough = asyncio.Event()

    async def consume():
        async for event in trigger.run():
            out.append(event.payload["training_job_id"])
            if len(out) >= count:
                enough.set()

    task = asyncio.ensure_future(consume())
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(enough.wait(), timeout)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return out


def test_restart_with_stored_state_neither_repeats_nor_loses(api):
    store = FakeStore()
    since = time.time() - 1
    api.add("before", int(since * 1000) - 60_000, "Running")

    def trigger():
        t = ModelArtsTrainingJobEventTrigger(poll_interval=0.01, since=since)
        t.asset_state_store = store
        return t

    now = int(time.time() * 1000)
    for i in range(5):
        api.add(f"a-{i}", now + i, "Completed", end=now + 10 + i)
    first = asyncio.run(_run_until(trigger(), 2))  # cancelled mid-batch
    assert first[:2] == ["a-0", "a-1"]
    assert store.writes >= 2
    api.set_phase("before", "Failed", end=now + 20)
    for i in range(3):
        api.add(f"b-{i}", now + 100 + i, "Completed", end=now + 200 + i)
    second = asyncio.run(_run_until(trigger(), 100, timeout=1.0))
    everything = first + second
    assert sorted(everything) == sorted(["before", *(f"a-{i}" for i in range(5)), "b-0", "b-1", "b-2"])
    assert len(everything) == len(set(everything))
    assert asyncio.run(_run_until(trigger(), 100, timeout=0.5)) == []


def test_corrupt_stored_state_starts_again_from_since(api, capsys, caplog):
    store = FakeStore()
    t = ModelArtsTrainingJobEventTrigger(poll_interval=0.01)
    store.data[t.state_key] = {"version": 1, "since_ms": "x", "handled": {"../": 1}}
    t.asset_state_store = store
    state = asyncio.run(t.load_state())
    assert state.watermark_ms is None and state.handled == {}
    assert "invalid" in logged(capsys, caplog)


def test_without_a_state_store_the_state_lives_in_memory(api, capsys, caplog):
    since = time.time() - 1
    now = int(time.time() * 1000)
    api.add("m-1", now, "Completed", end=now + 1)
    t = ModelArtsTrainingJobEventTrigger(poll_interval=0.01, since=since)
    assert getattr(t, "asset_state_store", None) is None
    assert asyncio.run(_run_until(t, 1)) == ["m-1"]
    assert "in memory" in logged(capsys, caplog)
    # A rebuilt trigger in the same triggerer process carries on from the remembered watermark.
    again = ModelArtsTrainingJobEventTrigger(poll_interval=0.01, since=since)
    assert asyncio.run(_run_until(again, 1, timeout=0.5)) == []


def test_transient_errors_are_logged_and_polling_backs_off(api, monkeypatch, capsys, caplog):
    delays = []
    real_sleep = asyncio.sleep

    async def fake_sleep(seconds):
        delays.append(seconds)
        await real_sleep(0)

    monkeypatch.setattr(events.asyncio, "sleep", fake_sleep)
    now = int(time.time() * 1000)
    api.add("t-1", now, "Completed", end=now + 1)
    api.failures = [
        ModelArtsApiError("throttled", status_code=429, error_code="APIG.0308"),
        ModelArtsApiError("bad gateway", status_code=502),
        ModelArtsTransportError("connection reset"),
    ]
    t = ModelArtsTrainingJobEventTrigger(poll_interval=2, since=time.time() - 1)
    assert asyncio.run(_run_until(t, 1)) == ["t-1"]
    assert delays[:3] == [4, 8, 16]
    text = logged(capsys, caplog)
    assert all(f"Transient error #{n} " in text for n in (1, 2, 3)) and "error #4" not in text


@pytest.mark.parametrize(
    "error",
    [
        ModelArtsAuthError("denied", status_code=401, error_code="APIG.0301"),
        ModelArtsAuthError("forbidden", status_code=403, error_code="ModelArts.0108"),
        ModelArtsNotFoundError("no such API", status_code=404, error_code="APIG.0101"),
        ModelArtsConfigError("connection extra is not JSON"),
    ],
    ids=["401", "403", "404", "config"],
)
def test_refused_credentials_end_the_trigger_with_a_clear_log_line(api, capsys, caplog, error):
    api.failures = [error]
    t = ModelArtsTrainingJobEventTrigger(poll_interval=0.01)
    assert asyncio.run(_run_until(t, 1, timeout=2)) == []
    text = logged(capsys, caplog)
    assert "Stopping the ModelArts job watcher" in text
    assert "credentials" in text
    assert api.closed
    assert api.searches == 0  # it stopped at the first refusal, no retry loop


def test_a_state_write_finishes_when_the_trigger_is_cancelled(api):
    class SlowStore(FakeStore):
        async def aset(self, key, value):
            await asyncio.sleep(0.2)
            self.data[key] = value

    store = SlowStore()
    now = int(time.time() * 1000)
    api.add("w-1", now, "Completed", end=now + 1)
    t = ModelArtsTrainingJobEventTrigger(poll_interval=0.01, since=time.time() - 1)
    t.asset_state_store = store

    async def main():
        got = asyncio.Event()

        async def consume():
            async for _ in t.run():
                got.set()

        task = asyncio.ensure_future(consume())
        await asyncio.wait_for(got.wait(), 5)
        await asyncio.sleep(0.05)  # the trigger is now writing the state after the event
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert "w-1" in store.data[t.state_key]["handled"]


def test_a_create_time_in_the_future_never_moves_the_watermark_past_now():
    api = FakeSearchApi()
    api.add("future", NOW_MS + 86_400_000, "Completed", end=NOW_MS + 86_400_001)
    state = WatcherState(since_ms=NOW_MS)
    assert poll(poller(api), state, NOW_MS + 10) == ["future"]
    assert state.watermark_ms == NOW_MS + 10 - events.VISIBILITY_LAG_MS
    api.add("normal", NOW_MS + 20, "Completed", end=NOW_MS + 30)
    assert poll(poller(api), state, NOW_MS + 100) == ["normal"]


def test_a_failed_poll_commits_nothing(api):
    store = FakeStore()
    now = int(time.time() * 1000)
    api.add("old", now - 10_000_000, "Running")
    t = ModelArtsTrainingJobEventTrigger(poll_interval=0.01, since=time.time() - 1)
    t.asset_state_store = store
    asyncio.run(_run_until(t, 1, timeout=0.2))
    api.add("x", now, "Completed", end=now + 1)
    api.set_phase("old", "Completed", end=now + 2)
    original = api.get_training_job

    async def failing_get(job_id):
        api.get_training_job = original
        raise ModelArtsApiError("boom", status_code=503)

    api.get_training_job = failing_get
    t2 = ModelArtsTrainingJobEventTrigger(poll_interval=0.01, since=t.since)
    t2.asset_state_store = store
    got = asyncio.run(_run_until(t2, 2, timeout=3))
    assert sorted(got) == ["old", "x"]
