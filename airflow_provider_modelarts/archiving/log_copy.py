"""The copy of one task log: a small state machine over a link source and a staged object.

States and what each one guarantees::

    LINK ---> OPEN ---> READ ---> COMMIT ---> DONE
     ^         ^  |      |  \\
     |         |  |      |   +--> PROBE --> OPEN   (total unknown: ask for the bytes past the end)
     +---------+--+------+        (interruptions: expired link, dropped connection, short body, stall)

* LINK asks ModelArts for a link (the hook retries transport errors, 5xx and 429; nothing here does).
* OPEN asks the link for the bytes from ``offset``; the answer is checked by
  :func:`~airflow_provider_modelarts.archiving.checks.plan_response` (a known total is never replaced
  without restarting the file).
* READ streams the body, one socket read at a time, into the pipeline (hash, compress, write); it stops
  at the next read when the archive is stopped, and treats less than ``stall_min_rate`` bytes per second
  over ``stall_window`` seconds as a stall (fresh link, resume).
* PROBE runs when the body ended without a stated total: ``416`` past the end proves the log complete.
* COMMIT makes the copy visible, unless the archive was stopped (checked under the stop lock).

Every interruption and restart counts against ``max_attempts``; nothing else is retried here.
"""

from __future__ import annotations

import enum
import http.client
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit, urlunsplit

import requests
import urllib3

from airflow_provider_modelarts.archiving.checks import (
    BodyPlan,
    ResponseRejected,
    body_outcome,
    plan_response,
)
from airflow_provider_modelarts.archiving.pipeline import BodyReader, Pipeline
from airflow_provider_modelarts.archiving.records import utcnow_iso
from airflow_provider_modelarts.archiving.staging import StagedObject, fmt_bytes
from airflow_provider_modelarts.exceptions import (
    ModelArtsApiError,
    ModelArtsArchiveStoppedError,
    ModelArtsLogLinkExpiredError,
    ModelArtsLogTransferError,
    ModelArtsValidationError,
)

if TYPE_CHECKING:
    from collections.abc import Generator

    from airflow.providers.common.compat.sdk import ObjectStoragePath

__all__ = [
    "CHUNK_SIZE",
    "COMPRESSIONS",
    "DEFAULT_MAX_ATTEMPTS",
    "DEFAULT_PROGRESS_INTERVAL",
    "DEFAULT_STALL_MIN_RATE",
    "DEFAULT_STALL_WINDOW",
    "CopySettings",
    "CopyState",
    "LogCopy",
    "LogLinkSource",
    "StopSignal",
    "TaskArchive",
    "archive_task_log",
    "redact_url",
]

log = logging.getLogger(__name__)

CHUNK_SIZE = 4 * 1024 * 1024
DEFAULT_MAX_ATTEMPTS = 10
DEFAULT_PROGRESS_INTERVAL = 5.0
DEFAULT_STALL_WINDOW = 60.0
DEFAULT_STALL_MIN_RATE = 1024.0
COMPRESSIONS = (None, "gzip")

# A connection that breaks while the body is read surfaces as one of these.
_STREAM_ERRORS: tuple[type[BaseException], ...] = (
    requests.RequestException,
    urllib3.exceptions.HTTPError,
    http.client.HTTPException,
    OSError,
)


class LogLinkSource(Protocol):
    """What the copy needs from the hook (a subset of ``ModelArtsHook``)."""

    def get_task_log_url(self, training_job_id: str, task_id: str, download: bool = False) -> str: ...

    def open_log_stream(
        self, url: str, *, offset: int = 0, timeout: float | None = None
    ) -> requests.Response: ...


def redact_url(url: str) -> str:
    """Return ``url`` without its query string and fragment (where a pre-signed link keeps its signature)."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


class StopSignal:
    """Set once when the archive must stop (task timeout or kill); shared by every copy of a run.

    Commits happen under its lock, so once :meth:`stop` returns nothing more is committed.
    """

    def __init__(self) -> None:
        self._event = threading.Event()
        self._lock = threading.Lock()

    def stop(self) -> None:
        with self._lock:
            self._event.set()

    @property
    def is_set(self) -> bool:
        return self._event.is_set()

    def check(self, what: str = "the archive") -> None:
        """:raises ModelArtsArchiveStoppedError: the archive was stopped."""
        if self._event.is_set():
            raise ModelArtsArchiveStoppedError(f"{what}: stopped before completion")

    @contextmanager
    def commit_guard(self, what: str) -> Generator[None, None, None]:
        """Hold the lock around a commit, after checking that the archive was not stopped."""
        with self._lock:
            self.check(what)
            yield


@dataclass
class TaskArchive:
    """Outcome of archiving one task's log (one manifest entry)."""

    task_id: str
    uri: str
    size: int
    sha256: str
    phase: str
    archived_at: str
    complete: bool
    compression: str | None = None
    stored_size: int | None = None
    stored_sha256: str | None = None
    content_length: int | None = None
    connections: int = 1
    """Connections opened to read the log (1 when nothing interrupted the copy)."""
    restarts: int = 0
    seconds: float = 0.0
    skipped: bool = False

    @classmethod
    def from_entry(cls, entry: dict[str, Any], *, skipped: bool) -> TaskArchive:
        """The archive a (checked) manifest entry describes."""
        known = {f.name for f in fields(cls)}
        if "attempts" in entry and "connections" not in entry:  # manifests written before 0.x renamed it
            entry = {**entry, "connections": entry["attempts"]}
        return cls(**{**{k: v for k, v in entry.items() if k in known}, "skipped": skipped})

    def manifest_entry(self) -> dict[str, Any]:
        entry = asdict(self)
        entry.pop("skipped")
        return entry

    def summary(self) -> dict[str, Any]:
        return {"task_id": self.task_id, "uri": self.uri, "size": self.size, "sha256": self.sha256}


@dataclass(frozen=True)
class CopySettings:
    """How one log is copied.

    :param compression: ``None`` or ``"gzip"``.
    :param chunk_size: bytes handed to the pipeline at a time.
    :param max_attempts: interruptions and restarts tolerated before giving up.
    :param progress_interval: seconds between progress lines.
    :param stall_window: seconds over which the rate is measured.
    :param stall_min_rate: bytes per second below which a window is a stall (``0`` disables).
    :param read_timeout: per-request timeout for the link (``None``: the connection's).
    """

    compression: str | None = None
    chunk_size: int = CHUNK_SIZE
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    progress_interval: float = DEFAULT_PROGRESS_INTERVAL
    stall_window: float = DEFAULT_STALL_WINDOW
    stall_min_rate: float = DEFAULT_STALL_MIN_RATE
    read_timeout: float | None = None

    def __post_init__(self) -> None:
        if self.compression not in COMPRESSIONS:
            raise ModelArtsValidationError(
                f"compression must be one of {COMPRESSIONS}, got {self.compression!r}"
            )
        if self.stall_window <= 0 or self.stall_min_rate < 0:
            raise ModelArtsValidationError("stall_window must be > 0 and stall_min_rate >= 0")


class _Stalled(Exception):
    pass


class StallDetector:
    """Flags a window of ``window`` seconds in which fewer than ``min_rate * window`` bytes arrived."""

    def __init__(self, *, window: float, min_rate: float, clock: Callable[[], float]) -> None:
        self.window = window
        self.min_bytes = min_rate * window
        self.clock = clock
        self.restart()

    def restart(self) -> None:
        self._start = self.clock()
        self._bytes = 0

    def feed(self, n: int) -> bool:
        """Count ``n`` more bytes; ``True`` if the window that just closed was a stall."""
        self._bytes += n
        now = self.clock()
        if now - self._start < self.window:
            return False
        stalled = self._bytes < self.min_bytes
        self._start, self._bytes = now, 0
        return stalled


class CopyState(enum.Enum):
    """The states of :class:`LogCopy`."""

    LINK = "get a link"
    OPEN = "open the link"
    READ = "read the body"
    PROBE = "ask past the end"
    COMMIT = "commit"
    DONE = "done"


class LogCopy:
    """Copies one task's log to ``target``; see the module docstring for the states.

    :param source: the hook (or anything implementing :class:`LogLinkSource`).
    :param training_job_id: the job.
    :param task_id: the task.
    :param target: final object path; nothing appears there unless the copy is complete and verified.
    :param phase: the job's phase, recorded in the result.
    :param complete: whether the job was terminal (its log final) when the copy started.
    :param settings: how to copy.
    :param stop: the run's stop signal.
    :param on_commit: called with the result under the stop lock, right after the commit (the record).
    :param clock: monotonic clock (tests).
    """

    def __init__(
        self,
        source: LogLinkSource,
        training_job_id: str,
        task_id: str,
        target: ObjectStoragePath,
        *,
        phase: str,
        complete: bool = True,
        settings: CopySettings | None = None,
        stop: StopSignal | None = None,
        on_commit: Callable[[TaskArchive], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.source = source
        self.training_job_id = training_job_id
        self.task_id = task_id
        self.target = target
        self.phase = phase
        self.complete = complete
        self.settings = settings or CopySettings()
        self.stop = stop or StopSignal()
        self.on_commit = on_commit
        self.clock = clock
        self.label = f"{training_job_id}/{task_id}"
        self.url: str | None = None
        self.offset = 0
        self.total: int | None = None
        self.content_length: int | None = None
        self.probing = False
        self.interruptions = 0
        self.restarts = 0
        self.connections = 0
        self._resp: requests.Response | None = None
        self._plan: BodyPlan | None = None
        self._pipeline: Pipeline | None = None
        self._queries: set[str] = set()
        self._stall = StallDetector(
            window=self.settings.stall_window, min_rate=self.settings.stall_min_rate, clock=clock
        )
        self._steps: dict[CopyState, Callable[[], CopyState]] = {
            CopyState.LINK: self._get_link,
            CopyState.OPEN: self._open,
            CopyState.READ: self._read,
            CopyState.PROBE: self._probe,
            CopyState.COMMIT: self._commit,
        }

    # -- driver ------------------------------------------------------------------------------------

    def run(self) -> TaskArchive:
        """Copy the log; return its manifest entry.

        :raises ModelArtsLogTransferError: the log could not be copied completely and verified.
        :raises ModelArtsArchiveStoppedError: the archive was stopped first.
        :raises ModelArtsArchiveDestinationError: the destination refused the data.
        :raises ModelArtsApiError: ModelArts or the link store refused (after the hook's retries).
        """
        started = self.clock()
        hash_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="modelarts-sha256")
        write_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="modelarts-write")
        self._pools = (hash_pool, write_pool)
        self._progress_next = started + self.settings.progress_interval
        self._started = started
        leaked: BaseException | None = None
        try:
            state = CopyState.LINK
            while state is not CopyState.DONE:
                state = self._steps[state]()
        except BaseException as e:
            self._abandon()
            if not self._leaks(e):
                raise
            leaked = e
        finally:
            hash_pool.shutdown(wait=True)
            write_pool.shutdown(wait=True)
        if leaked is not None:  # raised here, outside the handler, so nothing chains the original
            raise ModelArtsLogTransferError(
                f"{self.label}: {type(leaked).__name__} (details withheld: they held the signed link)"
            )
        return self._result

    def _leaks(self, err: BaseException) -> bool:
        """Whether ``err`` or anything chained to it mentions a link's query string."""
        seen: set[int] = set()
        current: BaseException | None = err
        while current is not None and id(current) not in seen:
            seen.add(id(current))
            text = f"{current!s} {current!r}"
            if any(q in text for q in self._queries):
                return True
            current = current.__cause__ or current.__context__
        return False

    def _abandon(self) -> None:
        if self._resp is not None:
            self._resp.close()
            self._resp = None
        if self._pipeline is not None:
            self._pipeline.abandon()
            self._pipeline = None

    def _interrupt(self, reason: str, *, fresh_link: bool) -> CopyState:
        """Count an interruption (or restart); give up past ``max_attempts``."""
        self.interruptions += 1
        where = redact_url(self.url) if self.url else "<no link>"
        if self.interruptions > self.settings.max_attempts:
            raise ModelArtsLogTransferError(
                f"Giving up on the log of {self.label} after {self.interruptions} interruptions "
                f"({self.offset} bytes received); last: {reason} ({where})"
            )
        log.warning(
            "%s: %s at byte %d (%s); attempt %d of %d%s",
            self.label,
            reason,
            self.offset,
            where,
            self.interruptions,
            self.settings.max_attempts,
            ", asking ModelArts for a fresh link" if fresh_link else "",
        )
        if fresh_link:
            self.url = None
            return CopyState.LINK
        return CopyState.OPEN

    def _restart(self, reason: str) -> None:
        """Throw away what was copied and start again from byte 0 (the total is forgotten too)."""
        self.restarts += 1
        log.warning("%s: %s; restarting this file from byte 0", self.label, reason)
        if self._pipeline is not None:
            self._pipeline.abandon()
            self._pipeline = None
        self.offset = 0
        self.total = None
        self.probing = False

    # -- states ------------------------------------------------------------------------------------

    def _get_link(self) -> CopyState:
        self.stop.check(self.label)
        url = self.source.get_task_log_url(self.training_job_id, self.task_id, download=True)
        query = urlsplit(url).query
        if query:
            self._queries.add(query)
        self.url = url
        return CopyState.OPEN

    def _probe(self) -> CopyState:
        log.info(
            "%s: the server stated no total; checking that nothing follows byte %d", self.label, self.offset
        )
        self.probing = True
        return CopyState.OPEN

    def _open(self) -> CopyState:
        self.stop.check(self.label)
        assert self.url is not None
        self.connections += 1
        failure: str | None = None
        try:
            resp = self.source.open_log_stream(
                self.url, offset=self.offset, timeout=self.settings.read_timeout
            )
        except ModelArtsLogLinkExpiredError:
            failure = "the download link expired"
        except ModelArtsApiError as e:
            # 416 past the bytes read, of a log whose total was never stated: nothing follows them.
            if not (e.status_code == 416 and self.total is None and self.offset > 0):
                raise
            self.total = self.offset
            return CopyState.COMMIT
        except _STREAM_ERRORS as e:
            failure = f"could not connect ({type(e).__name__})"
        if failure is not None:
            return self._interrupt(failure, fresh_link=True)
        return self._accept(resp)

    def _accept(self, resp: requests.Response) -> CopyState:
        """Check an answer (:func:`plan_response`) and decide whether its body can be read."""
        self._resp = resp  # closed by _abandon if anything below gives up
        rejected: ResponseRejected | None = None
        try:
            plan = plan_response(resp.status_code, resp.headers, offset=self.offset, known_total=self.total)
        except ResponseRejected as r:
            rejected = r
        if rejected is not None:
            resp.close()
            self._resp = None
            if not rejected.restart:
                raise ModelArtsLogTransferError(
                    f"{self.label}: {rejected.reason} from {redact_url(self.url or '')}"
                )
            state = self._interrupt(rejected.reason, fresh_link=False)
            self._restart(rejected.reason)
            return state
        if plan.restart:
            self._interrupt(
                f"the server ignored Range (200 instead of 206 at byte {self.offset})", fresh_link=False
            )
            self._restart("the server sent the whole log again")
        elif self.probing:
            self._interrupt("the body ended early: the server has more bytes", fresh_link=False)
        self.probing = False
        if plan.total is not None:
            self.total = plan.total
            self.content_length = plan.total
        self._plan = plan
        return CopyState.READ

    def _check_stop(self) -> None:
        self.stop.check(self.label)

    def _on_read(self, n: int) -> None:
        self.stop.check(self.label)
        if self.settings.stall_min_rate > 0 and self._stall.feed(n):
            raise _Stalled
        now = self.clock()
        if now >= self._progress_next:
            self._progress_next = now + self.settings.progress_interval
            self._log_progress(now)

    def _read(self) -> CopyState:
        resp, plan = self._resp, self._plan
        assert resp is not None and plan is not None
        if self._pipeline is None:
            # Stored as received unless compressed: then the size to store is unknown.
            expected = self.total if self.settings.compression is None else None
            staged = StagedObject(self.target, check_stop=self._check_stop, expected_size=expected)
            self._pipeline = Pipeline(self.settings.compression, staged, *self._pools)
        reader = BodyReader(resp, plan=plan, chunk_size=self.settings.chunk_size, on_read=self._on_read)
        self._stall.restart()
        broken: str | None = None
        try:
            for chunk in reader.chunks():
                self._pipeline.feed(chunk)
                self.offset += len(chunk)
        except _Stalled:
            broken = (
                f"stalled: under {fmt_bytes(self.settings.stall_min_rate)}/s "
                f"for {self.settings.stall_window:g}s"
            )
        except ResponseRejected as r:
            broken = r.reason
        except _STREAM_ERRORS as e:
            broken = f"the connection dropped ({type(e).__name__})"
        finally:
            resp.close()
            self._resp = None
        if broken is None:
            outcome = body_outcome(
                plan=plan, received=reader.wire, offset=self.offset, stream_ended=reader.ended
            )
            if outcome == "short":
                broken = (
                    f"short read: {reader.wire} of {plan.wire_length} bytes"
                    if plan.wire_length
                    else "the compressed body ended early"
                )
        if broken is not None:
            state = self._interrupt(broken, fresh_link=True)
            if plan.encoding is not None:
                self._restart("a content-encoded answer cannot be resumed by range")
            return state
        if outcome == "complete":
            self.total = self.offset
            return CopyState.COMMIT
        if outcome == "probe":
            return CopyState.PROBE
        return self._interrupt(
            f"the server sent part of the log ({self.offset} of {self.total})", fresh_link=False
        )

    def _commit(self) -> CopyState:
        pipeline = self._pipeline
        if pipeline is None:  # an empty log whose first answer was the probe's 416 cannot happen
            pipeline = self._pipeline = Pipeline(
                self.settings.compression,
                StagedObject(self.target, check_stop=self._check_stop),
                *self._pools,
            )
        pipeline.finish()
        if pipeline.size != self.offset or self.total != self.offset:
            raise ModelArtsLogTransferError(
                f"{self.label}: {pipeline.size} bytes hashed, {self.offset} received, total {self.total}"
            )
        self._result = self._make_result(pipeline)
        with self.stop.commit_guard(self.label):
            pipeline.staged.commit()
            self._pipeline = None
            if self.on_commit is not None:
                self.on_commit(self._result)
        self._log_done()
        return CopyState.DONE

    # -- reporting ---------------------------------------------------------------------------------

    def _make_result(self, pipeline: Pipeline) -> TaskArchive:
        sha = pipeline.sha256.hexdigest()
        compressed = self.settings.compression is not None
        return TaskArchive(
            task_id=self.task_id,
            uri=str(self.target),
            size=pipeline.size,
            sha256=sha,
            phase=self.phase,
            archived_at=utcnow_iso(),
            complete=self.complete,
            compression=self.settings.compression,
            stored_size=pipeline.stored_size,
            stored_sha256=pipeline.stored_sha256.hexdigest() if compressed else sha,
            content_length=self.content_length,
            connections=self.connections,
            restarts=self.restarts,
            seconds=round(self.clock() - self._started, 3),
        )

    def _log_progress(self, now: float) -> None:
        rate = self.offset / max(now - self._started, 1e-9)
        if self.total:
            eta = f"{(self.total - self.offset) / rate:.0f}s" if rate > 0 else "?"
            log.info(
                "%s: %s of %s (%.1f%%), %.1f MB/s, ETA %s",
                self.label,
                fmt_bytes(self.offset),
                fmt_bytes(self.total),
                100.0 * self.offset / self.total,
                rate / 1e6,
                eta,
            )
        else:
            log.info("%s: %s, %.1f MB/s", self.label, fmt_bytes(self.offset), rate / 1e6)

    def _log_done(self) -> None:
        r = self._result
        log.info(
            "%s: archived %s to %s in %.1fs (%.1f MB/s), sha256 %s, %d connection(s), %d restart(s)%s",
            self.label,
            fmt_bytes(r.size),
            redact_url(r.uri),
            r.seconds,
            r.size / max(r.seconds, 1e-9) / 1e6,
            r.sha256,
            r.connections,
            r.restarts,
            f", stored {fmt_bytes(r.stored_size or 0)} gzip" if r.compression else "",
        )


def archive_task_log(
    source: LogLinkSource,
    training_job_id: str,
    task_id: str,
    target: ObjectStoragePath,
    *,
    phase: str,
    complete: bool = True,
    compression: str | None = None,
    chunk_size: int = CHUNK_SIZE,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    progress_interval: float = DEFAULT_PROGRESS_INTERVAL,
    stall_window: float = DEFAULT_STALL_WINDOW,
    stall_min_rate: float = DEFAULT_STALL_MIN_RATE,
    clock: Callable[[], float] = time.monotonic,
    stop: StopSignal | None = None,
) -> TaskArchive:
    """Copy one task's log to ``target`` (see :class:`LogCopy`)."""
    settings = CopySettings(
        compression=compression,
        chunk_size=chunk_size,
        max_attempts=max_attempts,
        progress_interval=progress_interval,
        stall_window=stall_window,
        stall_min_rate=stall_min_rate,
    )
    return LogCopy(
        source,
        training_job_id,
        task_id,
        target,
        phase=phase,
        complete=complete,
        settings=settings,
        stop=stop,
        clock=clock,
    ).run()
