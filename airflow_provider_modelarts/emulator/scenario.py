"""Scenario loading and the time-driven state of emulated training jobs."""

from __future__ import annotations

import copy
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from airflow_provider_modelarts.emulator.logs import LogSource, make_log_source

__all__ = [
    "DEFAULT_GROWTH_SECONDS",
    "PHASES",
    "SECONDARY_PHASE",
    "TERMINAL",
    "EmulatedJob",
    "EmulatedTask",
    "ScenarioError",
    "TimelineEntry",
    "build_job",
    "default_scenario",
    "load_scenario",
]

PHASES = ("Creating", "Pending", "Running", "Failed", "Completed", "Terminating", "Terminated", "Abnormal")
TERMINAL = frozenset({"Failed", "Completed", "Terminated", "Abnormal"})
SECONDARY_PHASE = {
    "Creating": "Creating",
    "Pending": "Queuing",
    "Running": "Running",
    "Failed": "Failed",
    "Completed": "Completed",
    "Terminating": "Terminating",
    "Terminated": "Terminated",
    "Abnormal": "CreateFailed",
}
# Without a terminal phase in the timeline, a running job's log grows over this many seconds.
DEFAULT_GROWTH_SECONDS = 60.0


class ScenarioError(ValueError):
    """The scenario document is invalid."""


@dataclass
class TimelineEntry:
    """One phase change: ``phase`` starts ``at`` seconds after the job's base time."""

    phase: str
    at: float
    secondary_phase: str | None = None


@dataclass
class EmulatedTask:
    """A worker of a training job with its log and final exit status."""

    id: str
    log: LogSource
    exit_code: int | None
    message: str
    ip: str


@dataclass
class EmulatedJob:
    """A training job whose phase follows its timeline relative to ``base_time`` (unix seconds)."""

    id: str
    name: str
    timeline: list[TimelineEntry]
    tasks: list[EmulatedTask]
    base_time: float
    create_time_ms: int
    kind: str = "job"
    description: str = ""
    user_name: str = "emulator"
    algorithm: dict[str, Any] = field(default_factory=dict)
    spec: dict[str, Any] = field(default_factory=dict)
    node_count: int = 1
    growth_seconds: float = DEFAULT_GROWTH_SECONDS
    terminated_at: float | None = None
    events: list[dict[str, Any]] = field(default_factory=list)
    end_reason: str | None = None
    visible_from: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def entry_at(self, now: float) -> TimelineEntry:
        """The timeline entry in force at ``now``.

        :param now: unix time in seconds.
        """
        elapsed = now - self.base_time
        current = self.timeline[0]
        for entry in self.timeline:
            if entry.at <= elapsed:
                current = entry
            else:
                break
        return current

    def phase_at(self, now: float) -> str:
        """The job phase at ``now``.

        :param now: unix time in seconds.
        """
        return self.entry_at(now).phase

    def _first_at(self, phases: frozenset[str] | set[str]) -> float | None:
        for entry in self.timeline:
            if entry.phase in phases:
                return self.base_time + entry.at
        return None

    def running_start(self) -> float | None:
        """Unix time the job starts running (first Running entry), or None if it never runs."""
        return self._first_at({"Running"})

    def terminal_time(self) -> float | None:
        """Unix time the job reaches a terminal phase, or None."""
        return self._first_at(TERMINAL)

    def log_fraction(self, now: float) -> float:
        """Share (0..1) of the final log available at ``now``; it grows linearly while the job runs.

        :param now: unix time in seconds.
        """
        end = self.terminal_time()
        if end is not None and now >= end:
            return 1.0
        start = self.running_start()
        if start is None or now < start:
            return 0.0
        span = (end - start) if end is not None else self.growth_seconds
        if span <= 0:
            return 1.0
        return min(1.0, (now - start) / span)

    def final_log_size(self, task: EmulatedTask) -> int:
        """Size of the task's log once the job is terminal.

        :param task: one of the job's tasks.
        """
        return task.log.size

    def log_size_at(self, task: EmulatedTask, now: float) -> int:
        """Bytes of the task's log available at ``now``.

        :param task: one of the job's tasks.
        :param now: unix time in seconds.
        """
        size_after = getattr(task.log, "size_after", None)
        if size_after is not None:  # a log that grows line by line at its own rate
            start, end = self.running_start(), self.terminal_time()
            if end is not None and now >= end:
                return task.log.size
            return 0 if start is None or now < start else int(size_after(now - start))
        return int(task.log.size * self.log_fraction(now))

    def task(self, task_id: str) -> EmulatedTask | None:
        """The task with that id, or None.

        :param task_id: the task name, e.g. ``worker-0``.
        """
        for task in self.tasks:
            if task.id == task_id:
                return task
        return None

    def terminate(self, now: float) -> None:
        """Stop the job at ``now``: it becomes ``Terminated`` and its logs stop growing at their current length.

        :param now: unix time in seconds.
        """
        elapsed = now - self.base_time
        sizes = [self.log_size_at(task, now) for task in self.tasks]
        self.timeline = [e for e in self.timeline if e.at <= elapsed]
        self.timeline.append(TimelineEntry("Terminated", elapsed))
        self.terminated_at = now
        for task, size in zip(self.tasks, sizes, strict=True):
            task.log = _Truncated(task.log, size)
            task.exit_code = 137
            task.message = "terminated by user"


class _Truncated(LogSource):
    def __init__(self, inner: LogSource, size: int) -> None:
        super().__init__()
        self.inner = inner
        self.size = size

    def iter_range(self, start: int, end: int) -> Iterator[bytes | memoryview]:
        return self.inner.iter_range(start, min(end, self.size))


def _default_exit_code(timeline: list[TimelineEntry]) -> int | None:
    final = timeline[-1].phase
    if final == "Completed":
        return 0
    if final in ("Failed", "Abnormal"):
        return 1
    if final == "Terminated":
        return 137
    return None


def _parse_timeline(job_id: str, raw: object) -> list[TimelineEntry]:
    if raw is None:
        return [TimelineEntry("Completed", 0.0)]
    if not isinstance(raw, list) or not raw:
        raise ScenarioError(f"job {job_id}: timeline must be a non-empty list")
    entries: list[TimelineEntry] = []
    last = 0.0
    for raw_item in raw:
        item = {"phase": raw_item, "at": last} if isinstance(raw_item, str) else raw_item
        if not isinstance(item, dict) or "phase" not in item:
            raise ScenarioError(f"job {job_id}: each timeline entry needs a 'phase'")
        phase = str(item["phase"])
        if phase not in PHASES:
            raise ScenarioError(f"job {job_id}: unknown phase {phase!r}; expected one of {', '.join(PHASES)}")
        try:
            at = float(item.get("at", last))
        except (TypeError, ValueError):
            raise ScenarioError(f"job {job_id}: timeline 'at' must be a number") from None
        if at < 0 or at < last:
            raise ScenarioError(f"job {job_id}: timeline 'at' values must be >= 0 and non-decreasing")
        last = at
        secondary = item.get("secondary_phase")
        entries.append(TimelineEntry(phase, at, str(secondary) if secondary is not None else None))
    return entries


def build_job(
    raw: dict[str, Any], *, base_time: float, index: int = 0, base_dir: Path | None = None
) -> EmulatedJob:
    """Build one emulated job from its scenario mapping.

    :param raw: the job mapping (``id``, ``name``, ``timeline``, ``tasks``, ...).
    :param base_time: unix seconds that the timeline's ``at`` values count from.
    :param index: position in the scenario, used to order default create times.
    :param base_dir: directory for relative log file paths.
    """
    if not isinstance(raw, dict):
        raise ScenarioError("each job must be a mapping")
    job_id = raw.get("id")
    if not isinstance(job_id, str) or not job_id or "/" in job_id:
        raise ScenarioError(f"job id must be a non-empty string without '/': {job_id!r}")
    timeline = _parse_timeline(job_id, raw.get("timeline"))
    raw_tasks = raw.get("tasks") or [{"id": "worker-0"}]
    if not isinstance(raw_tasks, list):
        raise ScenarioError(f"job {job_id}: tasks must be a list")
    tasks: list[EmulatedTask] = []
    for position, task_item in enumerate(raw_tasks):
        raw_task = {"id": task_item} if isinstance(task_item, str) else task_item
        if not isinstance(raw_task, dict):
            raise ScenarioError(f"job {job_id}: each task must be a mapping")
        task_id = str(raw_task.get("id", f"worker-{position}"))
        if "/" in task_id or not task_id:
            raise ScenarioError(f"job {job_id}: invalid task id {task_id!r}")
        try:
            log = make_log_source(raw_task.get("log"), base_dir)
        except (ValueError, OSError) as err:
            raise ScenarioError(f"job {job_id} task {task_id}: {err}") from err
        exit_code = raw_task.get("exit_code", _default_exit_code(timeline))
        tasks.append(
            EmulatedTask(
                id=task_id,
                log=log,
                exit_code=None if exit_code is None else int(exit_code),
                message=str(raw_task.get("message", "")),
                ip=str(raw_task.get("ip", f"192.168.0.{10 + position}")),
            )
        )
    if len({t.id for t in tasks}) != len(tasks):
        raise ScenarioError(f"job {job_id}: duplicate task ids")
    if "create_time" in raw:
        create_time_ms = int(raw["create_time"])
    else:
        create_time_ms = int((base_time + float(raw.get("created_at", 0))) * 1000) + index
    return EmulatedJob(
        id=job_id,
        name=str(raw.get("name", job_id)),
        timeline=timeline,
        tasks=tasks,
        base_time=base_time,
        create_time_ms=create_time_ms,
        kind=str(raw.get("kind", "job")),
        description=str(raw.get("description", "")),
        user_name=str(raw.get("user_name", "emulator")),
        algorithm=copy.deepcopy(raw.get("algorithm") or {}),
        spec=copy.deepcopy(raw.get("spec") or {}),
        node_count=int(raw.get("node_count", len(tasks))),
        growth_seconds=float(raw.get("growth_seconds", DEFAULT_GROWTH_SECONDS)),
        events=[dict(e) for e in raw.get("events") or [] if isinstance(e, dict)],
        end_reason=str(raw["end_reason"]) if raw.get("end_reason") else None,
        # A job created later in the scenario (created_at > 0) is not listed or found before then.
        visible_from=base_time + max(float(raw.get("created_at", 0)), 0.0)
        if "create_time" not in raw
        else 0.0,
    )


def load_scenario(scenario: dict[str, Any] | str | Path | None) -> tuple[dict[str, Any], Path | None]:
    """Read a scenario document.

    :param scenario: a mapping, a path to a JSON/YAML file, or None for the default scenario.
    :returns: the scenario mapping and the directory relative log files are resolved against.
    """
    if scenario is None:
        return default_scenario(), None
    if isinstance(scenario, dict):
        return scenario, None
    path = Path(scenario)
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        data = yaml.safe_load(text)
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            import yaml

            data = yaml.safe_load(text)
    if not isinstance(data, dict) or not isinstance(data.get("jobs", []), list):
        raise ScenarioError(f"{path}: a scenario is a mapping with a 'jobs' list")
    return data, path.parent


def default_scenario() -> dict[str, Any]:
    """The scenario used when none is given: a completed, a failed, a running and a two-worker job."""
    return {
        "jobs": [
            {
                "id": "job-ok",
                "name": "emulated-ok",
                "timeline": [{"phase": "Completed", "at": 0}],
                "tasks": [
                    {
                        "id": "worker-0",
                        "exit_code": 0,
                        "log": {
                            "text": "".join(
                                f"[worker-0] step {i} loss={1 / (i + 1):.4f}\n" for i in range(100)
                            )
                            + "training finished, exit with 0\n"
                        },
                    }
                ],
            },
            {
                "id": "job-failed",
                "name": "emulated-failed",
                "timeline": [{"phase": "Failed", "at": 0}],
                "tasks": [
                    {
                        "id": "worker-0",
                        "exit_code": 1,
                        "message": "process exited with code 1",
                        "log": {
                            "text": "[worker-0] starting\nTraceback (most recent call last):\n"
                            '  File "train.py", line 3, in <module>\nRuntimeError: CUDA out of memory\n'
                        },
                    }
                ],
            },
            {
                "id": "job-running",
                "name": "emulated-running",
                "timeline": [
                    {"phase": "Pending", "at": 0},
                    {"phase": "Running", "at": 1},
                    {"phase": "Completed", "at": 5},
                ],
                "tasks": [
                    {"id": "worker-0", "exit_code": 0, "log": {"generate": {"size": 262144, "seed": 3}}}
                ],
            },
            {
                "id": "job-multi",
                "name": "emulated-multi",
                "timeline": [{"phase": "Completed", "at": 0}],
                "tasks": [
                    {"id": "worker-0", "exit_code": 0, "log": {"generate": {"size": 1048576, "seed": 1}}},
                    {"id": "worker-1", "exit_code": 0, "log": {"generate": {"size": 524288, "seed": 2}}},
                ],
            },
        ]
    }
