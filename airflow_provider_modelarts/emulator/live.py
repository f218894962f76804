"""Emulated logs that grow line by line while a job runs, and the job events derived from its timeline."""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from airflow_provider_modelarts.emulator.logs import CHUNK_SIZE, LogSource

if TYPE_CHECKING:
    from airflow_provider_modelarts.emulator.scenario import EmulatedJob

__all__ = ["EVENT_LEVELS", "PacedLog", "end_reason", "list_events", "make_paced_log"]

EVENT_LEVELS = ("Info", "Warning", "Error")
_MAX_LINES = 1_000_000
_FAILURE_PHASES = frozenset({"Failed", "Abnormal"})


class PacedLog(LogSource):
    """A log of numbered lines written one every ``every`` seconds once the job runs.

    Line ``n`` (from 1) is ``template.format(n=n)``. With ``progress``, every tenth line is a
    carriage-return progress bar (``progress 0%\\r...\\rprogress 100% step n``); with
    ``invalid_utf8``, every 25th line carries two bytes that are not UTF-8. Between two lines the
    next one is visible in part, so readers see partial last lines.

    :param count: number of lines.
    :param every: seconds between lines.
    :param template: the line text, ``{n}`` is the line number.
    :param progress: include carriage-return progress lines.
    :param invalid_utf8: include invalid UTF-8 bytes.
    """

    def __init__(
        self,
        *,
        count: int,
        every: float,
        template: str = "line {n:05d} of the training log",
        progress: bool = False,
        invalid_utf8: bool = False,
    ) -> None:
        super().__init__()
        if not 0 <= count <= _MAX_LINES:
            raise ValueError(f"lines.count must be from 0 to {_MAX_LINES}")
        if every <= 0:
            raise ValueError("lines.every must be > 0 seconds")
        self.every = every
        lines = [self._line(template, n, progress, invalid_utf8) for n in range(1, count + 1)]
        self._data = b"".join(lines)
        self._ends: list[int] = []
        total = 0
        for line in lines:
            total += len(line)
            self._ends.append(total)
        self.size = total

    @staticmethod
    def _line(template: str, n: int, progress: bool, invalid_utf8: bool) -> bytes:
        text = template.format(n=n).encode("utf-8")
        if progress and n % 10 == 0:
            text = b"progress 0%\rprogress 50%\rprogress 100% " + text
        if invalid_utf8 and n % 25 == 0:
            text += b" bad-bytes:\xff\xfe"
        return text + b"\n"

    def size_after(self, seconds: float) -> int:
        """Bytes written after ``seconds`` of running (whole lines plus part of the next one)."""
        if seconds <= 0 or not self._ends:
            return 0
        done, fraction = divmod(seconds / self.every, 1.0)
        done = int(done)
        if done >= len(self._ends):
            return self.size
        start = self._ends[done - 1] if done > 0 else 0
        return start + int((self._ends[done] - start) * fraction)

    def line_count_at(self, size: int) -> int:
        """Complete lines within the first ``size`` bytes."""
        return bisect.bisect_right(self._ends, size)

    def iter_range(self, start: int, end: int) -> Iterator[bytes | memoryview]:
        view = memoryview(self._data)
        for pos in range(start, end, CHUNK_SIZE):
            yield view[pos : min(end, pos + CHUNK_SIZE)]


def make_paced_log(spec: Any) -> PacedLog:
    """Build a :class:`PacedLog` from a scenario ``log.lines`` mapping."""
    if not isinstance(spec, dict) or "count" not in spec or "every" not in spec:
        raise ValueError("log.lines needs 'count' and 'every'")
    return PacedLog(
        count=int(spec["count"]),
        every=float(spec["every"]),
        template=str(spec.get("template", "line {n:05d} of the training log")),
        progress=bool(spec.get("progress", False)),
        invalid_utf8=bool(spec.get("invalid_utf8", False)),
    )


def _iso(moment: float) -> str:
    return datetime.fromtimestamp(moment, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _timeline_events(job: EmulatedJob, now: float) -> list[tuple[float, dict[str, str]]]:
    events: list[tuple[float, dict[str, str]]] = []
    for entry in job.timeline:
        moment = job.base_time + entry.at
        if moment > now:
            break
        level = "Error" if entry.phase in _FAILURE_PHASES else "Info"
        message = f"Training job phase changed to {entry.phase}"
        events.append((moment, {"message": message, "level": level, "source": "Job"}))
        if entry.phase in _FAILURE_PHASES:
            for task in job.tasks:
                if task.exit_code not in (0, None):
                    text = f"Task {task.id} exited with code {task.exit_code}"
                    if task.message:
                        text += f": {task.message}"
                    events.append((moment, {"message": text, "level": "Error", "source": "Task"}))
    for extra in job.events:
        moment = job.base_time + float(extra.get("at", 0))
        if moment <= now:
            events.append(
                (
                    moment,
                    {
                        "message": str(extra.get("message", "")),
                        "level": str(extra.get("level", "Info")),
                        "source": str(extra.get("source", "K8S")),
                    },
                )
            )
    return events


def list_events(job: EmulatedJob, now: float, query: list[tuple[str, str]]) -> dict[str, Any]:
    """The body of ``GET .../events`` at ``now``: timeline phase changes, task exits, scenario events.

    :raises ValueError: an invalid ``limit``, ``offset``, ``order`` or ``level``.
    """
    params = dict(query)
    try:
        limit = int(params.get("limit", "50"))
        offset = int(params.get("offset", "0"))
    except ValueError:
        raise ValueError("InvalidParam(limit/offset): not an integer") from None
    if not 1 <= limit <= 100 or offset < 0:
        raise ValueError("InvalidParam(limit): limit must be 1-100 and offset >= 0")
    order = params.get("order", "desc")
    if order not in ("asc", "desc"):
        raise ValueError("InvalidParam(order): asc or desc")
    level = params.get("level")
    if level is not None and level not in EVENT_LEVELS:
        raise ValueError("InvalidParam(level): Info, Warning or Error")
    events = [
        {**body, "time": _iso(moment)}
        for moment, body in sorted(_timeline_events(job, now), key=lambda item: item[0])
        if level is None or body["level"] == level
    ]
    if order == "desc":
        events.reverse()
    return {"events": events[offset : offset + limit], "total": len(events)}


def end_reason(job: EmulatedJob, phase: str) -> str:
    """``running_records[].end_reason`` of a job that ended in ``phase``."""
    if job.end_reason:
        return job.end_reason
    if phase in _FAILURE_PHASES:
        failed = [t for t in job.tasks if t.exit_code not in (0, None)]
        if failed:
            return f"task {failed[0].id} exited with code {failed[0].exit_code}"
    return f"job {phase.lower()}"
