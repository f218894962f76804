"""Live training-job logs in the Airflow task log: a byte cursor per worker, one ranged read per poll.

The pure core (:class:`LogStreamState`, :class:`WorkerCursor`) turns the bytes read from a worker's
log into complete, readable lines: it holds a partial last line until its newline (or the end of the
job), collapses carriage-return progress bars to their last state, replaces invalid UTF-8, bounds
what one poll shows (``max_bytes`` per worker, then a marker line) and survives being serialised to
JSON (trigger kwargs, ``task_state_store``). :class:`LogStreamer` and :class:`AsyncLogStreamer` do
the reading: the OBS log link with ``Range: bytes={cursor}-`` (a link is reused until shortly before
it expires), or the preview API when the identity may not mint links (``/logs/url`` answers 403; the
``modelarts:trainJob:logExport`` permission is Write-level, preview is Read-level).
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from airflow_provider_modelarts.exceptions import (
    ModelArtsApiError,
    ModelArtsAuthError,
    ModelArtsLogLinkExpiredError,
    ModelArtsValidationError,
)
from airflow_provider_modelarts.hooks.modelarts import log_url_expires_at
from airflow_provider_modelarts.states import TrainingJobPhase
from airflow_provider_modelarts.training_job import TrainingJob

if TYPE_CHECKING:
    from airflow_provider_modelarts.hooks.modelarts import ModelArtsAsyncHook, ModelArtsHook

__all__ = [
    "DEFAULT_STREAM_MAX_BYTES",
    "MAX_LINE_BYTES",
    "STATE_STORE_KEY",
    "AsyncLogStreamer",
    "ContextLogStream",
    "LogStreamState",
    "LogStreamer",
    "WorkerCursor",
    "format_line",
    "load_stream_state",
    "save_event_stream_state",
    "save_stream_state",
    "select_stream_workers",
    "validate_stream_args",
]

DEFAULT_STREAM_MAX_BYTES = 64 * 1024
MAX_STREAM_MAX_BYTES = 16 * 1024 * 1024
# A "line" longer than this without a newline is shown in pieces rather than held forever.
MAX_LINE_BYTES = 64 * 1024
# A link is replaced this many seconds before it expires (links live about five minutes).
LINK_REFRESH_MARGIN = 30.0
STATE_STORE_KEY = "modelarts_log_stream"
STATE_VERSION = 1
_MAX_WORKERS = 4096
_NO_LOG_YET = frozenset({TrainingJobPhase.CREATING, TrainingJobPhase.PENDING})


def format_line(worker: str, raw: bytes) -> str:
    """``[worker] line`` for one log line (without its newline).

    Invalid UTF-8 is replaced; a carriage-return progress bar (``50%\\r75%\\r100%``) shows only its
    last non-empty state.
    """
    if b"\r" in raw:
        states = [part for part in raw.split(b"\r") if part]
        raw = states[-1] if states else b""
    return f"[{worker}] {raw.decode('utf-8', errors='replace')}"


def _marker(worker: str, text: str) -> str:
    return f"[{worker}] ... {text}"


@dataclass
class WorkerCursor:
    """Where the stream of one worker's log stands.

    :param offset: bytes of the log consumed (shown, held as ``pending`` or skipped).
    :param pending: the start of a line whose newline has not arrived yet.
    :param skip_partial: drop bytes up to the next newline (after a gap, the stream resumes mid-line).
    """

    offset: int = 0
    pending: bytes = b""
    skip_partial: bool = False

    def consume(self, worker: str, data: bytes) -> list[str]:
        """Take ``data`` (the bytes right after ``offset``); return the complete lines it finishes."""
        self.offset += len(data)
        if self.skip_partial:
            newline = data.find(b"\n")
            if newline < 0:
                return []
            data = data[newline + 1 :]
            self.skip_partial = False
        pieces = (self.pending + data).split(b"\n")
        self.pending = pieces.pop()
        lines = [format_line(worker, piece.rstrip(b"\r")) for piece in pieces]
        if len(self.pending) > MAX_LINE_BYTES:
            lines.append(format_line(worker, self.pending) + " [line continues]")
            self.pending = b""
        return lines

    def flush(self, worker: str) -> list[str]:
        """At the end of the job: the held partial line, if any."""
        if not self.pending or self.skip_partial:
            self.pending = b""
            return []
        line, self.pending = self.pending, b""
        return [format_line(worker, line.rstrip(b"\r"))]

    def skip_to(self, worker: str, offset: int, where: str) -> list[str]:
        """Jump to ``offset`` without showing the bytes between; return the marker line saying so."""
        skipped = offset - self.offset
        lines = []
        if self.pending:
            lines.append(format_line(worker, self.pending.rstrip(b"\r")) + " [line cut]")
        self.pending = b""
        self.offset = offset
        self.skip_partial = True
        lines.append(_marker(worker, f"{skipped} bytes not shown; the full log is {where}"))
        return lines

    def to_dict(self) -> dict[str, Any]:
        return {
            "offset": self.offset,
            "pending": base64.b64encode(self.pending).decode("ascii"),
            "skip_partial": self.skip_partial,
        }

    @classmethod
    def from_dict(cls, data: Any) -> WorkerCursor:
        if not isinstance(data, dict):
            raise ModelArtsValidationError("a log cursor must be a mapping")
        offset = data.get("offset", 0)
        if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
            raise ModelArtsValidationError(f"a log cursor offset must be an integer >= 0, got {offset!r}")
        try:
            pending = base64.b64decode(str(data.get("pending", "")), validate=True)
        except ValueError:
            raise ModelArtsValidationError("a log cursor's pending bytes are not base64") from None
        if len(pending) > MAX_LINE_BYTES:
            raise ModelArtsValidationError("a log cursor's pending line is too long")
        return cls(offset=offset, pending=pending, skip_partial=bool(data.get("skip_partial", False)))


@dataclass
class LogStreamState:
    """The cursors of every streamed worker plus how the log is read; JSON-able via :meth:`to_dict`.

    :param cursors: one :class:`WorkerCursor` per worker task id.
    :param use_preview: ``/logs/url`` was refused (403), read through the preview API instead.
    """

    cursors: dict[str, WorkerCursor] = field(default_factory=dict)
    use_preview: bool = False

    def cursor(self, worker: str) -> WorkerCursor:
        return self.cursors.setdefault(worker, WorkerCursor())

    def apply_range(
        self, worker: str, data: bytes, *, start: int, total: int | None, max_bytes: int, where: str
    ) -> list[str]:
        """Lines from a ranged read of ``data`` starting at byte ``start`` of a log of ``total`` bytes.

        A server that ignored ``Range`` sends the whole object from 0 (``start=0``); bytes already
        consumed are dropped. At most ``max_bytes`` are shown; when the log has more, the rest up to
        ``total`` is skipped with a marker line.
        """
        cursor = self.cursor(worker)
        if start > cursor.offset:
            return cursor.skip_to(worker, start, where) + self.apply_range(
                worker, data, start=start, total=total, max_bytes=max_bytes, where=where
            )
        fresh = data[cursor.offset - start :]
        lines = cursor.consume(worker, fresh[:max_bytes])
        end = total if total is not None else start + len(data)
        if end > cursor.offset + 1:
            # Skip to the last byte rather than past it: if that byte is a newline, the next read
            # starts with it and no whole line is dropped.
            lines += cursor.skip_to(worker, end - 1, f"{where} (stream_max_bytes={max_bytes} per poll)")
        return lines

    def apply_preview(
        self, worker: str, content: str, *, full_size: int, max_bytes: int, where: str
    ) -> list[str]:
        """Lines from a preview (the last bytes of a log of ``full_size`` bytes), diffed by size.

        When the log grew by more than the preview window since the last poll, one marker line says
        how many bytes were not shown. Offsets are exact for valid UTF-8; the preview replaces invalid
        bytes before they reach the client, which can shift a cut by a few bytes.
        """
        cursor = self.cursor(worker)
        data = content.encode("utf-8")
        if full_size <= cursor.offset:
            return []
        window_start = max(0, full_size - len(data))
        lines: list[str] = []
        if window_start > cursor.offset:
            lines += cursor.skip_to(worker, window_start, where)
        fresh = data[len(data) - (full_size - cursor.offset) :]
        if len(fresh) > max_bytes:
            lines += cursor.consume(worker, fresh[:max_bytes])
            lines += cursor.skip_to(worker, full_size - 1, f"{where} (stream_max_bytes={max_bytes} per poll)")
            return lines + cursor.consume(worker, fresh[-1:])
        return lines + cursor.consume(worker, fresh)

    def flush(self) -> list[str]:
        """At the end of the job: every held partial line."""
        lines: list[str] = []
        for worker, cursor in self.cursors.items():
            lines += cursor.flush(worker)
        return lines

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "use_preview": self.use_preview,
            "cursors": {worker: cursor.to_dict() for worker, cursor in self.cursors.items()},
        }

    @classmethod
    def from_dict(cls, data: Any) -> LogStreamState:
        """Rebuild from :meth:`to_dict` output; ``None`` gives a fresh state."""
        if data is None:
            return cls()
        if not isinstance(data, dict) or data.get("version") != STATE_VERSION:
            raise ModelArtsValidationError("log stream state is not a version-1 mapping")
        cursors = data.get("cursors") or {}
        if not isinstance(cursors, dict) or len(cursors) > _MAX_WORKERS:
            raise ModelArtsValidationError("log stream state: cursors must be a mapping of workers")
        return cls(
            cursors={str(worker): WorkerCursor.from_dict(c) for worker, c in cursors.items()},
            use_preview=bool(data.get("use_preview", False)),
        )


def validate_stream_args(*, stream_logs: Any, stream_log_tasks: Any, stream_max_bytes: Any) -> None:
    """Check the streaming arguments of the sensor and the archive operator.

    :raises ModelArtsValidationError: a value of the wrong type or out of range.
    """
    if not isinstance(stream_logs, bool):
        raise ModelArtsValidationError(f"stream_logs must be True or False, got {stream_logs!r}")
    if stream_log_tasks is not None:
        if isinstance(stream_log_tasks, (str, bytes)) or not isinstance(stream_log_tasks, Sequence):
            raise ModelArtsValidationError("stream_log_tasks must be a list of task ids such as ['worker-0']")
        if len(stream_log_tasks) > _MAX_WORKERS:
            raise ModelArtsValidationError(f"stream_log_tasks may name at most {_MAX_WORKERS} tasks")
        for task_id in stream_log_tasks:
            if not isinstance(task_id, str) or not task_id or "/" in task_id or len(task_id) > 256:
                raise ModelArtsValidationError(f"invalid task id in stream_log_tasks: {task_id!r}")
    if (
        isinstance(stream_max_bytes, bool)
        or not isinstance(stream_max_bytes, int)
        or not 1024 <= stream_max_bytes <= MAX_STREAM_MAX_BYTES
    ):
        raise ModelArtsValidationError(
            f"stream_max_bytes must be an integer from 1024 to {MAX_STREAM_MAX_BYTES}, got {stream_max_bytes!r}"
        )


def select_stream_workers(job: TrainingJob | dict[str, Any], requested: Sequence[str] | None) -> list[str]:
    """Which workers to stream.

    By default the first worker (rank 0 usually logs the training progress) plus every worker that
    has already exited with a non-zero code, so a 64-worker job stays readable and a failure is
    shown. With ``requested``, the named workers that exist in ``status.tasks``.
    """
    view = TrainingJob.from_api(job)
    tasks = list(view.tasks[:_MAX_WORKERS])
    if requested is not None:
        return [t for t in tasks if t in set(requested)]
    chosen = tasks[:1]
    for entry in view.failed_task_statuses:
        task = entry.get("task")
        if task in tasks and task not in chosen:
            chosen.append(task)
    return chosen


def _store(context: Any) -> Any:
    getter = getattr(context, "get", None)
    return getter("task_state_store") if getter is not None else None


def _store_key(training_job_id: str) -> str:
    return f"{STATE_STORE_KEY}:{training_job_id}"


def load_stream_state(context: Any, training_job_id: str) -> tuple[dict[str, Any] | None, bool]:
    """The saved stream state of this task instance (Airflow 3.3+ ``task_state_store``).

    :return: ``(state or None, whether a store exists)``; without a store (Airflow < 3.3) the
        caller cannot know what earlier pokes or tries showed.
    """
    store = _store(context)
    if store is None:
        return None, False
    try:
        value = store.get(_store_key(training_job_id))
        LogStreamState.from_dict(value)
    except Exception:
        # A stored value this version cannot read starts a fresh stream rather than failing the task.
        return None, True
    return (value if isinstance(value, dict) else None), True


def save_stream_state(context: Any, training_job_id: str, state: LogStreamState) -> bool:
    """Save the stream state for the next poke or try; False when there is no store or it failed."""
    store = _store(context)
    if store is None:
        return False
    try:
        store.set(_store_key(training_job_id), state.to_dict())
    except Exception:
        return False
    return True


def save_event_stream_state(context: Any, training_job_id: str, event: Any) -> bool:
    """Save the position a trigger event carries (``log_stream_state``), if it carries one."""
    raw = event.get("log_stream_state") if isinstance(event, dict) else None
    if not isinstance(raw, dict):
        return False
    return save_stream_state(context, training_job_id, LogStreamState.from_dict(raw))


@dataclass
class _Link:
    url: str
    expires_at: float


class _StreamerBase:
    """What the sync and async streamers share: the state, the links and the emitted lines."""

    def __init__(
        self,
        *,
        training_job_id: str,
        state: LogStreamState | dict[str, Any] | None,
        stream_log_tasks: Sequence[str] | None,
        max_bytes: int,
        emit: Callable[[str], None],
        start_at_tail: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.training_job_id = training_job_id
        self.state = state if isinstance(state, LogStreamState) else LogStreamState.from_dict(state)
        self.stream_log_tasks = list(stream_log_tasks) if stream_log_tasks is not None else None
        self.max_bytes = max_bytes
        self.emit = emit
        self.start_at_tail = start_at_tail
        self.clock = clock
        self.links: dict[str, _Link] = {}
        self.errors: dict[str, str] = {}

    def _where(self, worker: str) -> str:
        return (
            f"in the archived log or a fresh link (ModelArts /logs/url) for job "
            f"{self.training_job_id} task {worker}"
        )

    def _link_valid(self, worker: str) -> str | None:
        link = self.links.get(worker)
        if link is None or self.clock() >= link.expires_at - LINK_REFRESH_MARGIN:
            return None
        return link.url

    def _remember_link(self, worker: str, url: str) -> None:
        self.links[worker] = _Link(url, log_url_expires_at(url).timestamp())

    def _note_error(self, worker: str, err: Exception) -> None:
        # Shown once per kind of error and worker, so a flaky worker does not flood the task log.
        text = f"{type(err).__name__}: {err}"
        if self.errors.get(worker) != text:
            self.errors[worker] = text
            self.emit(_marker(worker, f"log not read this poll, will try again ({text})"))

    def _needs_tail_start(self, worker: str) -> bool:
        return self.start_at_tail and worker not in self.state.cursors

    def _start_at_tail(self, worker: str, total: int | None) -> None:
        """Without a saved position, show only the last ``max_bytes`` (a bounded, marked repeat)."""
        cursor = self.state.cursor(worker)
        start = max(0, (total or 0) - self.max_bytes)
        cursor.offset, cursor.skip_partial = start, start > 0
        self.emit(
            _marker(
                worker,
                "no saved log position (task_state_store needs Airflow 3.3+): showing the log from byte "
                f"{start}; lines up to one poll old may repeat what an earlier poke or try showed",
            )
        )

    def _emit_all(self, lines: list[str]) -> None:
        for line in lines:
            self.emit(line)

    def _switch_to_preview(self, worker: str, err: ModelArtsApiError) -> None:
        self.state.use_preview = True
        self.links.clear()
        self.emit(
            _marker(
                worker,
                f"ModelArts refused a log link ({err.error_code or err.status_code}; the identity needs "
                "modelarts:trainJob:logExport); reading logs through the preview API instead",
            )
        )

    def _apply_range(self, worker: str, part: dict[str, Any]) -> list[str]:
        """The lines of a ranged read (``read_log_range``'s answer) of ``worker``'s log."""
        return self.state.apply_range(
            worker,
            part["data"],
            start=part["start"],
            total=part["total"],
            max_bytes=self.max_bytes,
            where=self._where(worker),
        )

    def _apply_preview(self, worker: str, preview: dict[str, Any]) -> list[str]:
        """The lines of a preview (``preview_task_log``'s answer) of ``worker``'s log."""
        if self._needs_tail_start(worker):
            self._start_at_tail(worker, preview["full_size"])
        return self.state.apply_preview(
            worker,
            preview["content"],
            full_size=preview["full_size"],
            max_bytes=self.max_bytes,
            where=self._where(worker),
        )

    @staticmethod
    def _is_refused_link(err: Exception) -> bool:
        return isinstance(err, ModelArtsAuthError) and err.status_code == 403

    def _workers(self, job: TrainingJob | dict[str, Any]) -> list[str]:
        if TrainingJob.from_api(job).phase in _NO_LOG_YET:
            return []  # no log to read before the job runs (ModelArts answers NotReadyToFetchLog)
        return select_stream_workers(job, self.stream_log_tasks)


class LogStreamer(_StreamerBase):
    """Read the new bytes of each streamed worker's log with the sync hook and emit them as lines.

    :param hook: the :class:`~airflow_provider_modelarts.hooks.modelarts.ModelArtsHook`.
    :param training_job_id: the job.
    :param state: the state to resume from (:meth:`LogStreamState.to_dict` output) or None.
    :param stream_log_tasks: workers to stream; None picks them (:func:`select_stream_workers`).
    :param max_bytes: bytes shown per worker per poll at most.
    :param emit: called with each line, e.g. the task logger's ``info``.
    """

    hook: ModelArtsHook

    def __init__(self, *, hook: ModelArtsHook, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.hook = hook

    def poll(self, job: TrainingJob | dict[str, Any], *, final: bool = False) -> None:
        """Emit what each streamed worker wrote since the last poll; with ``final``, also held lines."""
        for worker in self._workers(job):
            try:
                self._emit_all(self._read(worker))
            except Exception as err:
                self._note_error(worker, err)
        if final:
            self._emit_all(self.state.flush())

    def _read(self, worker: str) -> list[str]:
        if self.state.use_preview:
            return self._read_preview(worker)
        url = self._link_valid(worker)
        if url is None:
            try:
                url = self.hook.get_task_log_url(self.training_job_id, worker)
            except ModelArtsApiError as err:
                if not self._is_refused_link(err):
                    raise
                self._switch_to_preview(worker, err)
                return self._read_preview(worker)
            self._remember_link(worker, url)
        if self._needs_tail_start(worker):
            self._start_at_tail(worker, self.hook.read_log_range(url, start=0, length=1)["total"])
        cursor = self.state.cursor(worker)
        try:
            part = self.hook.read_log_range(url, start=cursor.offset, length=self.max_bytes)
        except ModelArtsLogLinkExpiredError:
            self.links.pop(worker, None)
            raise
        return self._apply_range(worker, part)

    def _read_preview(self, worker: str) -> list[str]:
        preview = self.hook.preview_task_log(self.training_job_id, worker)
        return self._apply_preview(worker, preview)


class AsyncLogStreamer(_StreamerBase):
    """:class:`LogStreamer` for triggers, on the async hook; never blocks the event loop.

    :param hook: the :class:`~airflow_provider_modelarts.hooks.modelarts.ModelArtsAsyncHook`.
    """

    hook: ModelArtsAsyncHook

    def __init__(self, *, hook: ModelArtsAsyncHook, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.hook = hook

    async def poll(self, job: TrainingJob | dict[str, Any], *, final: bool = False) -> None:
        """Emit what each streamed worker wrote since the last poll; with ``final``, also held lines."""
        for worker in self._workers(job):
            try:
                self._emit_all(await self._read(worker))
            except Exception as err:
                self._note_error(worker, err)
        if final:
            self._emit_all(self.state.flush())

    async def _read(self, worker: str) -> list[str]:
        if self.state.use_preview:
            return await self._read_preview(worker)
        url = self._link_valid(worker)
        if url is None:
            try:
                # The link stays in this object and is never logged (errors name only its path), so
                # it is not added to the secret masker, which would grow for as long as the
                # triggerer runs and slow every later log line.
                url = await self.hook.get_task_log_url(self.training_job_id, worker, mask=False)
            except ModelArtsApiError as err:
                if not self._is_refused_link(err):
                    raise
                self._switch_to_preview(worker, err)
                return await self._read_preview(worker)
            self._remember_link(worker, url)
        if self._needs_tail_start(worker):
            probe = await self.hook.read_log_range(url, start=0, length=1)
            self._start_at_tail(worker, probe["total"])
        cursor = self.state.cursor(worker)
        try:
            part = await self.hook.read_log_range(url, start=cursor.offset, length=self.max_bytes)
        except ModelArtsLogLinkExpiredError:
            self.links.pop(worker, None)
            raise
        return self._apply_range(worker, part)

    async def _read_preview(self, worker: str) -> list[str]:
        preview = await self.hook.preview_task_log(self.training_job_id, worker)
        return self._apply_preview(worker, preview)


class ContextLogStream:
    """The streaming of one task run: a :class:`LogStreamer` resumed from and saved to the task's store.

    Used by the sensor (poke and reschedule) and the archive operator while it waits. On Airflow 3.3+
    the position is saved in ``context["task_state_store"]`` after every poll, so reschedule pokes
    and retries continue where the last poll stopped. Without a store, a reschedule poke or a retry
    starts at the last ``max_bytes`` of each log with a marker line (a bounded, visible repeat).

    :param hook: the sync hook.
    :param training_job_id: the job.
    :param stream_log_tasks: workers to stream, or None for the default choice.
    :param max_bytes: most bytes per worker per poll.
    :param emit: called with each line (the task logger's ``info``, so the secret masker applies).
    :param fresh_process_per_poll: each poll runs in a new process (reschedule mode).
    """

    def __init__(
        self,
        *,
        hook: ModelArtsHook,
        training_job_id: str,
        stream_log_tasks: Sequence[str] | None,
        max_bytes: int,
        emit: Callable[[str], None],
        fresh_process_per_poll: bool = False,
    ) -> None:
        self.hook = hook
        self.training_job_id = training_job_id
        self.stream_log_tasks = stream_log_tasks
        self.max_bytes = max_bytes
        self.emit = emit
        self.fresh_process_per_poll = fresh_process_per_poll
        self.streamer: LogStreamer | None = None

    def _start(self, context: Any) -> LogStreamer:
        saved, has_store = load_stream_state(context, self.training_job_id)
        ti = context.get("ti") if hasattr(context, "get") else None
        retried = getattr(ti, "try_number", 1) not in (None, 1)
        return LogStreamer(
            hook=self.hook,
            training_job_id=self.training_job_id,
            state=saved,
            stream_log_tasks=self.stream_log_tasks,
            max_bytes=self.max_bytes,
            emit=self.emit,
            start_at_tail=not has_store and (self.fresh_process_per_poll or retried),
        )

    def poll(self, context: Any, job: TrainingJob | dict[str, Any], *, final: bool = False) -> None:
        """Show what the streamed workers wrote since the last poll, then save the position."""
        if self.streamer is None:
            self.streamer = self._start(context)
        self.streamer.poll(job, final=final)
        save_stream_state(context, self.training_job_id, self.streamer.state)
