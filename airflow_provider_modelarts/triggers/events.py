"""Event trigger for ``AssetWatcher``: each ModelArts training job that finishes is one asset event.

The watcher keeps a *watermark* on ``metadata.create_time`` (every job created before it has been seen)
and the ids it already handled, and lists jobs with keyset paging: each page asks for
``create_time >= cursor`` sorted ascending, so jobs that appear, finish or disappear while a scan runs
never shift a page boundary over an unseen job. Jobs still running when the watermark passes them are
kept as *pending* and followed with one search of the running phases per poll (plus one
``GET`` for each pending job that left that list). See ``docs/event-driven-archival.md``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import math
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from airflow.triggers.base import BaseEventTrigger, TriggerEvent

from airflow_provider_modelarts.connection import DEFAULT_CONN_ID, validate_resource_id
from airflow_provider_modelarts.exceptions import (
    ModelArtsAuthError,
    ModelArtsConfigError,
    ModelArtsNotFoundError,
    ModelArtsResponseError,
    ModelArtsValidationError,
)
from airflow_provider_modelarts.hooks.modelarts import ModelArtsAsyncHook
from airflow_provider_modelarts.states import TrainingJobPhase
from airflow_provider_modelarts.training_job import MAX_TIME_MS, TrainingJob, epoch_ms

if TYPE_CHECKING:
    from airflow_provider_modelarts.hooks.modelarts_async import SharedHook as _SharedHook

__all__ = [
    "DEFAULT_EVENT_PHASES",
    "FinishedJob",
    "ModelArtsTrainingJobEventTrigger",
    "WatcherState",
    "parse_listed_job",
]

DEFAULT_EVENT_PHASES: tuple[str, ...] = ("Completed", "Failed", "Terminated", "Abnormal")
TRANSIENT_PHASES: tuple[str, ...] = tuple(p.value for p in TrainingJobPhase if not p.is_terminal)
PAGE_SIZE = 50
MAX_PAGES_PER_SCAN = 2_000
"""A scan stops after this many pages (100,000 jobs); the watermark then only moves as far as it got."""
MAX_GETS_PER_POLL = 50
"""Pending jobs that left the running list and are looked up one by one, at most, per poll."""
MAX_TASKS = 1_000
MAX_TRACKED_IDS = 100_000
"""Handled or pending ids kept in the state, at most (a bound against a server listing without end)."""
VISIBILITY_LAG_MS = 60_000
"""The watermark trails the newest create_time seen by this much, for jobs that become visible late."""
MAX_BACKOFF_S = 600.0
_UPPER_BOUND_MS = str(2**53 - 1)
_NAME_LIMIT = 256
_STATE_KEY_PREFIX = "modelarts_training_job_events"
_STATE_VERSION = 1
_CLASSPATH = "airflow_provider_modelarts.triggers.modelarts.ModelArtsTrainingJobEventTrigger"
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")


# ------------------------------------------------------------------------------------------------
# Listed jobs: every API value validated before it can reach an event
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FinishedJob:
    """One listed training job, validated.

    :param id: ``metadata.id`` (a valid path segment).
    :param name: ``metadata.name``; ``None`` if the API sent something that is not a short printable string.
    :param phase: ``status.phase``, a documented phase.
    :param create_time_ms: ``metadata.create_time`` (epoch ms).
    :param end_time_ms: the last ``running_records[].end_at`` (s), else ``start_time + duration``; ``None``
        for a job that never started.
    :param tasks: ``status.tasks``, the valid task ids only, at most :data:`MAX_TASKS`.
    """

    id: str
    name: str | None
    phase: str
    create_time_ms: int
    end_time_ms: int | None
    tasks: tuple[str, ...]

    def payload(self) -> dict[str, Any]:
        """The event payload: ids, name, phase, and times as ISO-8601 UTC strings."""
        return {
            "training_job_id": self.id,
            "name": self.name,
            "phase": self.phase,
            "create_time": _iso(self.create_time_ms),
            "end_time": None if self.end_time_ms is None else _iso(self.end_time_ms),
            "tasks": list(self.tasks),
        }


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).isoformat(timespec="milliseconds")


def _job_name(raw: Any) -> str | None:
    if isinstance(raw, str) and 0 < len(raw) <= _NAME_LIMIT and raw.isprintable():
        return raw
    return None


def parse_listed_job(item: Any) -> FinishedJob:
    """Validate one ``items[]`` entry of a job search (or a job details body).

    :param item: the job body as the API sent it.
    :raises ModelArtsResponseError: the id, phase or create time is missing or invalid.
    """
    if not isinstance(item, dict) or not isinstance(item.get("status"), dict):
        raise ModelArtsResponseError("a listed training job has no metadata or status object")
    try:
        job = TrainingJob.from_api(item)
    except ModelArtsValidationError as err:
        raise ModelArtsResponseError(f"a listed training job has an invalid id: {err}") from None
    if not job.has_metadata:
        raise ModelArtsResponseError("a listed training job has no metadata or status object")
    if job.id is None:
        raise ModelArtsResponseError(
            "a listed training job has an invalid id: metadata.id must be a non-empty string"
        )
    phase = TrainingJobPhase.parse(job.reported_phase, training_job_id=job.id).value
    if job.create_time_ms is None:
        raise ModelArtsResponseError(f"training job {job.id} has no valid metadata.create_time")
    return FinishedJob(
        id=job.id,
        name=_job_name(job.name),
        phase=phase,
        create_time_ms=job.create_time_ms,
        end_time_ms=job.end_time_ms,
        tasks=job.tasks[:MAX_TASKS],
    )


# ------------------------------------------------------------------------------------------------
# State: what survives a triggerer restart (in the asset's state store on Airflow 3.3+)
# ------------------------------------------------------------------------------------------------


def _id_map(raw: Any) -> dict[str, int]:
    if not isinstance(raw, dict):
        raise ValueError("not a mapping")
    out: dict[str, int] = {}
    for key, value in raw.items():
        created = epoch_ms(value)
        if created is None and value != 0:
            raise ValueError("bad create time")
        out[validate_resource_id(key, "job id")] = created or 0
    return out


@dataclass
class WatcherState:
    """The watcher's memory, JSON-serialisable.

    :param since_ms: jobs finishing before this (epoch ms) are history, never emitted.
    :param watermark_ms: every job created before this has been seen (``None``: not started yet).
    :param handled: ids already emitted (or skipped as history) -> create_time, for jobs at or above the
        watermark (the only ones a scan can list again).
    :param pending: ids seen running -> create_time; followed until they finish.
    """

    since_ms: int
    watermark_ms: int | None = None
    handled: dict[str, int] = field(default_factory=dict)
    pending: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "version": _STATE_VERSION,
            "since_ms": self.since_ms,
            "watermark_ms": self.watermark_ms,
            "handled": dict(self.handled),
            "pending": dict(self.pending),
        }

    @classmethod
    def from_json(cls, raw: Any) -> WatcherState:
        """Rebuild a stored state.

        :param raw: what :meth:`to_json` returned.
        :raises ValueError: ``raw`` is not a valid stored state.
        """
        if not isinstance(raw, dict) or raw.get("version") != _STATE_VERSION:
            raise ValueError("unknown state format")
        since = raw.get("since_ms")
        watermark = raw.get("watermark_ms")
        if isinstance(since, bool) or not isinstance(since, int) or since < 0:
            raise ValueError("bad since_ms")
        if watermark is not None and (isinstance(watermark, bool) or not isinstance(watermark, int)):
            raise ValueError("bad watermark_ms")
        return cls(since, watermark, _id_map(raw.get("handled", {})), _id_map(raw.get("pending", {})))


# ------------------------------------------------------------------------------------------------
# Argument checks
# ------------------------------------------------------------------------------------------------


def _check_phases(phases: Iterable[str] | None) -> list[str]:
    if phases is None:
        return list(DEFAULT_EVENT_PHASES)
    if isinstance(phases, str) or not isinstance(phases, Iterable):
        raise ModelArtsValidationError("phases must be a list of terminal phase names")
    values = list(phases)
    allowed = [p.value for p in TrainingJobPhase if p.is_terminal]
    if not values or any(p not in allowed for p in values) or len(set(values)) != len(values):
        raise ModelArtsValidationError(
            f"phases must be a non-empty list of distinct terminal phases {allowed}, got {values!r:.200}"
        )
    return values


def _check_since(since: str | float | None) -> float | None:
    if since is None:
        return None
    if isinstance(since, str):
        try:
            text = since.strip()
            moment = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text)
        except ValueError:
            raise ModelArtsValidationError(f"since must be an ISO-8601 time, got {since!r:.60}") from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=timezone.utc)
        value = moment.timestamp()
    elif isinstance(since, (int, float)) and not isinstance(since, bool):
        value = float(since)
    else:
        raise ModelArtsValidationError(
            f"since must be an ISO-8601 string or epoch seconds, got {since!r:.60}"
        )
    if not math.isfinite(value) or not 0 <= value * 1000 < MAX_TIME_MS:
        raise ModelArtsValidationError(f"since is out of range: {since!r:.60}")
    return value


def _check_args(conn_id: Any, poll_interval: Any, name_filter: Any) -> float:
    if not isinstance(conn_id, str) or not conn_id.strip():
        raise ModelArtsValidationError("modelarts_conn_id must be a non-empty string")
    if isinstance(poll_interval, bool) or not isinstance(poll_interval, (int, float)):
        raise ModelArtsValidationError(
            f"poll_interval must be a number of seconds, got {poll_interval!r:.40}"
        )
    if not math.isfinite(poll_interval) or not 0 < poll_interval <= 86_400:
        raise ModelArtsValidationError(f"poll_interval must be > 0 and <= 86400 s, got {poll_interval!r}")
    if name_filter is not None and (
        not isinstance(name_filter, str)
        or not 1 <= len(name_filter) <= 64
        or not set(name_filter) <= _NAME_CHARS
    ):
        raise ModelArtsValidationError(
            f"name_filter must be 1-64 of [A-Za-z0-9_-] (job names use no others), got {name_filter!r:.80}"
        )
    return float(poll_interval)


# ------------------------------------------------------------------------------------------------
# One poll
# ------------------------------------------------------------------------------------------------


@dataclass
class _Scan:
    jobs: list[FinishedJob] = field(default_factory=list)
    complete: bool = True
    pages: int = 0


class _Poller:
    """Lists the jobs that finished since the last poll and updates :class:`WatcherState`.

    :param hook: the async hook.
    :param phases: phases that count as "finished" for events.
    :param name_filter: the search API's ``like`` filter on ``name``, or ``None``.
    :param log: where to report skipped jobs.
    """

    def __init__(
        self, hook: ModelArtsAsyncHook, *, phases: list[str], name_filter: str | None, log: Any
    ) -> None:
        self.hook = hook
        self.phases = list(phases)
        self.name_filter = name_filter
        self.log = log
        self.api_calls = 0

    def _filters(self, phases: Iterable[str], low_ms: int, high: str) -> list[dict[str, Any]]:
        filters: list[dict[str, Any]] = [
            {"key": "phase", "operator": "in", "value": list(phases)},
            {"key": "create_time", "operator": "between", "value": [str(max(low_ms, 0)), high]},
        ]
        if self.name_filter:
            filters.append({"key": "name", "operator": "like", "value": [self.name_filter]})
        return filters

    async def scan(self, phases: Iterable[str], low_ms: int, high: str = _UPPER_BOUND_MS) -> _Scan:
        """Every job in ``phases`` created in ``[low_ms, high]``, by keyset paging on create_time.

        Each page asks for ``create_time >= cursor`` from page 0, so a job leaving or joining the result
        while the scan runs cannot shift an unseen job across a page boundary. Only a full page of one
        create_time (or of unreadable items) is paged on by index.
        """
        phases = list(phases)
        result = _Scan()
        seen: set[str] = set()
        cursor, page = low_ms, 0
        while result.pages < MAX_PAGES_PER_SCAN:
            self.api_calls += 1
            result.pages += 1
            answer = await self.hook.search_training_jobs(
                filters=self._filters(phases, cursor, high), offset=page, limit=PAGE_SIZE, order="asc"
            )
            items = answer.get("items") or []
            newest: int | None = None
            for item in items:
                try:
                    job = parse_listed_job(item)
                except ModelArtsResponseError as err:
                    self.log.warning("Skipping a listed training job: %s", err)
                    continue
                newest = job.create_time_ms if newest is None else max(newest, job.create_time_ms)
                if job.id not in seen:
                    seen.add(job.id)
                    result.jobs.append(job)
            if len(items) < PAGE_SIZE:
                return result
            if newest is not None and newest > cursor:
                cursor, page = newest, 0
            else:
                page += 1
        self.log.warning("Stopped a training-job scan after %d pages; continuing next poll", result.pages)
        result.complete = False
        return result

    async def poll(self, state: WatcherState, now_ms: int) -> list[FinishedJob]:
        """One poll: the jobs to emit, oldest end first; ``state`` is updated in place."""
        if state.watermark_ms is None:
            await self._start(state, now_ms)
        assert state.watermark_ms is not None
        watermark = state.watermark_ms
        main = await self.scan([*self.phases, *TRANSIENT_PHASES], watermark)
        finished = self._take(state, main.jobs)
        finished += await self._follow_pending(state, watermark)
        if main.jobs:
            # Every job from the watermark up to the newest listed one was seen (also when the scan was
            # cut short); a create_time in the future never moves the watermark past now.
            newest = min(max(j.create_time_ms for j in main.jobs), now_ms)
            state.watermark_ms = max(watermark, newest - VISIBILITY_LAG_MS)
        self._prune(state)
        finished.sort(key=lambda j: (j.end_time_ms or j.create_time_ms, j.create_time_ms, j.id))
        return finished

    async def _start(self, state: WatcherState, now_ms: int) -> None:
        """First poll ever: remember the jobs already running; history before ``since`` is skipped."""
        watermark = min(state.since_ms, now_ms) - VISIBILITY_LAG_MS
        running = await self.scan(TRANSIENT_PHASES, 0, str(max(watermark - 1, 0)))
        for job in running.jobs:
            if job.phase in TRANSIENT_PHASES and len(state.pending) < MAX_TRACKED_IDS:
                state.pending[job.id] = job.create_time_ms
        state.watermark_ms = watermark

    def _take(self, state: WatcherState, jobs: Iterable[FinishedJob]) -> list[FinishedJob]:
        finished: list[FinishedJob] = []
        for job in jobs:
            if job.id in state.handled:
                continue
            if job.phase in TRANSIENT_PHASES:
                if len(state.pending) < MAX_TRACKED_IDS:
                    state.pending[job.id] = job.create_time_ms
                continue
            was_pending = state.pending.pop(job.id, None) is not None
            if job.phase not in self.phases:
                continue
            state.handled[job.id] = job.create_time_ms
            # A job seen running by this watcher finished after ``since`` whatever its clock says.
            if was_pending or (job.end_time_ms or job.create_time_ms) >= state.since_ms:
                finished.append(job)
        return finished

    async def _follow_pending(self, state: WatcherState, watermark: int) -> list[FinishedJob]:
        """Pending jobs below the watermark: one search of the running phases, a GET for each that left."""
        older = {i: c for i, c in state.pending.items() if c < watermark}
        if not older:
            return []
        running = await self.scan(TRANSIENT_PHASES, min(older.values()), str(watermark - 1))
        still = {j.id for j in running.jobs if j.phase in TRANSIENT_PHASES}
        if not running.complete:
            return []
        finished: list[FinishedJob] = []
        for job_id in sorted(set(older) - still)[:MAX_GETS_PER_POLL]:
            self.api_calls += 1
            try:
                body = await self.hook.get_training_job(job_id)
            except ModelArtsNotFoundError:
                self.log.info("Training job %s was deleted before it finished; no event", job_id)
                state.pending.pop(job_id, None)
                continue
            try:
                job = parse_listed_job(body)
            except ModelArtsResponseError as err:
                self.log.warning("Pending training job %s: unreadable details, will retry: %s", job_id, err)
                continue
            if job.id != job_id:
                self.log.warning("Pending training job %s: the API answered for %s", job_id, job.id)
                continue
            finished += self._take(state, [job])
        return finished

    @staticmethod
    def _prune(state: WatcherState) -> None:
        """Forget handled ids below the watermark: no scan lists them again."""
        watermark = state.watermark_ms or 0
        state.handled = {i: c for i, c in state.handled.items() if c >= watermark}
        if len(state.handled) > MAX_TRACKED_IDS:
            keep = sorted(state.handled.items(), key=lambda kv: kv[1])[-MAX_TRACKED_IDS:]
            state.handled = dict(keep)


# ------------------------------------------------------------------------------------------------
# The trigger
# ------------------------------------------------------------------------------------------------

_MEMORY_STATES: dict[str, WatcherState] = {}
"""Fallback store (Airflow < 3.3, or a watcher on several assets): lives as long as the triggerer process."""


def _default_hook_factory(conn_id: str) -> ModelArtsAsyncHook:
    # One attempt per request: the watcher's own loop backs off and polls again.
    return ModelArtsAsyncHook(conn_id, max_retries=0)


def _is_fatal(error: BaseException) -> bool:
    """Errors that polling again cannot fix: refused credentials, a bad connection, a wrong endpoint."""
    if isinstance(error, (ModelArtsAuthError, ModelArtsConfigError, ModelArtsValidationError)):
        return True
    if isinstance(error, ModelArtsNotFoundError):
        return True
    return type(error).__name__ in {"AirflowNotFoundException", "ConnectionNotFound"}


class ModelArtsTrainingJobEventTrigger(BaseEventTrigger):
    """Watch ModelArts for training jobs that finish; one ``TriggerEvent`` per job, exactly once.

    Use it in ``AssetWatcher(name=..., trigger=ModelArtsTrainingJobEventTrigger(...))``. The payload is
    ``{"training_job_id", "name", "phase", "create_time", "end_time", "tasks"}`` (times as ISO-8601 UTC;
    ``end_time`` is the end of the last running record, else ``start_time + duration``, ``None`` for a
    job that never started).

    The watermark, the recently emitted ids and the jobs still running are kept in the asset's state
    store (Airflow 3.3+) so a triggerer restart neither repeats nor loses a job; on older Airflow they
    live in the triggerer's memory (see ``docs/event-driven-archival.md`` for what a restart costs).

    :param modelarts_conn_id: the ``modelarts`` connection.
    :param poll_interval: seconds between polls.
    :param phases: the phases that count as finished (terminal phases only).
    :param name_filter: only jobs whose name contains this (the search API's ``like`` filter).
    :param since: ISO-8601 time or epoch seconds; jobs that finished earlier are history and never
        emitted. Default: the moment the watcher first starts.
    """

    hook_factory = staticmethod(_default_hook_factory)

    def __init__(
        self,
        *,
        modelarts_conn_id: str = DEFAULT_CONN_ID,
        poll_interval: float = 60,
        phases: list[str] | None = None,
        name_filter: str | None = None,
        since: str | float | None = None,
    ) -> None:
        super().__init__()
        self.poll_interval = _check_args(modelarts_conn_id, poll_interval, name_filter)
        self.modelarts_conn_id = modelarts_conn_id
        self.phases = _check_phases(phases)
        self.name_filter = name_filter
        self.since = _check_since(since)
        self._memory_only = False

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            _CLASSPATH,
            {
                "modelarts_conn_id": self.modelarts_conn_id,
                "poll_interval": self.poll_interval,
                "phases": list(self.phases),
                "name_filter": self.name_filter,
                "since": self.since,
            },
        )

    @property
    def state_key(self) -> str:
        """The asset state store key: one per connection, phases, name filter and ``since``."""
        identity = json.dumps(
            [self.modelarts_conn_id, sorted(self.phases), self.name_filter, self.since], separators=(",", ":")
        )
        return f"{_STATE_KEY_PREFIX}:{hashlib.sha256(identity.encode()).hexdigest()[:32]}"

    # -- state ----------------------------------------------------------------------------------

    def _store(self) -> Any:
        return None if self._memory_only else getattr(self, "asset_state_store", None)

    async def load_state(self) -> WatcherState:
        """The stored state, else a new one starting at ``since`` (default: now)."""
        store = self._store()
        raw: Any = None
        if store is None:
            self.log.info(
                "No asset state store (Airflow < 3.3): the watermark lives in memory; a triggerer restart "
                "skips jobs that finish while it is down"
            )
            raw = _MEMORY_STATES.get(self.state_key)
            return raw if isinstance(raw, WatcherState) else self._fresh_state()
        try:
            if hasattr(store, "aget"):
                raw = await store.aget(self.state_key, None)
            else:
                raw = await asyncio.to_thread(store.get, self.state_key, None)
        except ValueError as err:
            self.log.warning("Asset state store unusable (%s); keeping the watermark in memory", err)
            self._memory_only = True
            return _MEMORY_STATES.get(self.state_key) or self._fresh_state()
        if raw is None:
            return self._fresh_state()
        try:
            return WatcherState.from_json(raw)
        except (ValueError, ModelArtsValidationError) as err:
            self.log.error("Stored watcher state is invalid (%s); starting again from 'since'", err)
            return self._fresh_state()

    def _fresh_state(self) -> WatcherState:
        since = self.since if self.since is not None else time.time()
        return WatcherState(since_ms=int(since * 1000))

    async def save_state(self, state: WatcherState) -> None:
        """Store ``state`` (a write failure is logged; the state in memory stays right)."""
        _MEMORY_STATES[self.state_key] = WatcherState.from_json(state.to_json())
        store = self._store()
        if store is None:
            return
        value = state.to_json()
        if hasattr(store, "aset"):
            write = asyncio.ensure_future(store.aset(self.state_key, value))
        else:
            write = asyncio.ensure_future(asyncio.to_thread(store.set, self.state_key, value))
        try:
            # A triggerer shutting down cancels the trigger: the write still finishes, so an event already
            # handed to Airflow is never sent again after the restart.
            await asyncio.shield(write)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await write
            raise
        except ValueError as err:
            self.log.warning("Asset state store unusable (%s); keeping the watermark in memory", err)
            self._memory_only = True
        except Exception as err:
            self.log.warning("Could not store the watcher state, will store it again: %s", err)

    # -- run ------------------------------------------------------------------------------------

    async def run(self) -> AsyncIterator[TriggerEvent]:
        from airflow_provider_modelarts.triggers.modelarts import shared_hooks

        try:
            shared = shared_hooks.acquire(self.modelarts_conn_id, self.hook_factory)
        except Exception as err:
            self.log.error("Stopping the ModelArts job watcher on %s: %s", self.modelarts_conn_id, err)
            return
        try:
            async for event in self._watch(shared):
                yield event
        finally:
            await shared_hooks.release(self.modelarts_conn_id)

    async def _watch(self, shared: _SharedHook) -> AsyncIterator[TriggerEvent]:
        from airflow_provider_modelarts.triggers.modelarts import is_transient_error

        state = await self.load_state()
        poller = _Poller(shared.hook, phases=self.phases, name_filter=self.name_filter, log=self.log)
        failures = 0
        while True:
            working = WatcherState.from_json(state.to_json())
            try:
                finished = await poller.poll(working, int(time.time() * 1000))
            except Exception as err:
                if _is_fatal(err):
                    self.log.error(
                        "Stopping the ModelArts job watcher on %s: the API refused the request and "
                        "polling again cannot help (check the connection's credentials, project and "
                        "endpoint): %s",
                        self.modelarts_conn_id,
                        err,
                    )
                    return
                failures += 1
                delay = min(
                    self.poll_interval * 2 ** min(failures, 10), max(self.poll_interval, MAX_BACKOFF_S)
                )
                kind = "Transient error" if is_transient_error(err) else "Error"
                self.log.warning(
                    "%s #%d listing training jobs; next poll in %.0f s: %s", kind, failures, delay, err
                )
                await asyncio.sleep(delay)
                continue
            failures = 0
            async for event in self._emit(state, finished):
                yield event
            state = working
            await self.save_state(state)
            await asyncio.sleep(self.poll_interval)

    async def _emit(self, state: WatcherState, finished: list[FinishedJob]) -> AsyncIterator[TriggerEvent]:
        """Yield each event, then record its id (so a restart mid-batch emits the rest, not these)."""
        for job in finished:
            self.log.info("Training job %s reached %s", job.id, job.phase)
            yield TriggerEvent(job.payload())
            state.handled[job.id] = job.create_time_ms
            state.pending.pop(job.id, None)
            await self.save_state(state)
