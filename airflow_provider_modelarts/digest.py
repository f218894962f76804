"""A failure digest of a ModelArts training job: why it failed, in one readable block.

The digest gathers the phase and secondary phase, each failed worker's exit code and message
(``status.task_statuses``), the end reason (``status.running_records``), the latest Error then
Warning events (``GET .../events``) and the last lines of each failed worker's log (preview API,
Read-level permission). Each part is fetched on its own, with one attempt, a short timeout and an
overall deadline: a part that cannot be fetched is named in the digest and never hides the rest.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from airflow_provider_modelarts.exceptions import ModelArtsValidationError
from airflow_provider_modelarts.log_stream import format_line
from airflow_provider_modelarts.training_job import TrainingJob

if TYPE_CHECKING:
    from airflow_provider_modelarts.hooks.modelarts import ModelArtsHook

__all__ = [
    "DEFAULT_DIGEST_DEADLINE",
    "DEFAULT_DIGEST_TAIL_LINES",
    "DEFAULT_PART_TIMEOUT",
    "FailureDigest",
    "build_failure_digest",
    "failed_workers",
]

DEFAULT_DIGEST_TAIL_LINES = 20
DEFAULT_PART_TIMEOUT = 5.0
DEFAULT_DIGEST_DEADLINE = 8.0
_ERROR_EVENTS = 3
_WARNING_EVENTS = 2
_MAX_TAIL_WORKERS = 8
_MAX_TEXT = 500


def _clip(value: Any) -> str:
    text = " ".join(str(value if value is not None else "").split())
    return text if len(text) <= _MAX_TEXT else text[: _MAX_TEXT - 3] + "..."


def failed_workers(job: TrainingJob | dict[str, Any]) -> list[dict[str, Any]]:
    """``{"task", "exit_code", "message"}`` of each worker that exited with a non-zero code."""
    return [
        {"task": _clip(e.get("task")), "exit_code": e.get("exit_code"), "message": _clip(e.get("message"))}
        for e in TrainingJob.from_api(job).failed_task_statuses
    ]


def _end_reason(job: TrainingJob) -> str | None:
    if job.end_reason is None:
        return None
    reason, task = job.end_reason
    return f"{_clip(reason)} (task {_clip(task)})" if task else _clip(reason)


@dataclass
class FailureDigest:
    """Why a training job failed. :meth:`to_dict` is JSON-able; :meth:`render` is the text block.

    :param training_job_id: the job.
    :param phase: ``status.phase``.
    :param secondary_phase: ``status.secondary_phase``.
    :param failed_workers: ``{"task", "exit_code", "message"}`` per worker with a non-zero exit code.
    :param end_reason: the last ``running_records[].end_reason``.
    :param events: the latest Error then Warning events ``{"time", "level", "source", "message"}``.
    :param log_tails: the last lines of each failed worker's log.
    :param unavailable: the parts that could not be fetched, with the reason.
    """

    training_job_id: str
    phase: str | None
    secondary_phase: str | None = None
    failed_workers: list[dict[str, Any]] = field(default_factory=list)
    end_reason: str | None = None
    events: list[dict[str, str]] = field(default_factory=list)
    log_tails: dict[str, list[str]] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def render(self) -> str:
        phase = self.phase or "unknown"
        if self.secondary_phase and self.secondary_phase != self.phase:
            phase += f" ({self.secondary_phase})"
        out = [f"=== ModelArts training job {self.training_job_id} failed: phase {phase} ==="]
        if self.end_reason:
            out.append(f"End reason: {self.end_reason}")
        for failed in self.failed_workers:
            message = failed["message"] or "no message"
            out.append(f"Worker {failed['task']}: exit code {failed['exit_code']}, {message}")
        if self.events:
            out.append("Latest events:")
            out.extend(f"  {e['time']} {e['level']} [{e['source']}] {e['message']}" for e in self.events)
        for worker, lines in self.log_tails.items():
            out.append(f"Last {len(lines)} log lines of {worker}:")
            out.extend(f"  {line}" for line in lines)
        for part, reason in self.unavailable.items():
            out.append(f"Not available: {part}: {reason}")
        out.append("=== end of failure digest ===")
        return "\n".join(out)


def _events(hook: ModelArtsHook, training_job_id: str) -> list[dict[str, str]]:
    events = hook.get_training_job_events(training_job_id, level="Error", limit=_ERROR_EVENTS)
    events += hook.get_training_job_events(training_job_id, level="Warning", limit=_WARNING_EVENTS)
    return [{k: _clip(e.get(k)) for k in ("time", "level", "source", "message")} for e in events]


def _tail(hook: ModelArtsHook, training_job_id: str, worker: str, tail_lines: int) -> list[str]:
    content = hook.preview_task_log(training_job_id, worker)["content"]
    lines = content.rstrip("\n").split("\n")[-tail_lines:] if content else []
    prefix = f"[{worker}] "
    return [_clip(format_line(worker, line.encode("utf-8"))[len(prefix) :]) for line in lines]


def _ready_hook(factory: Callable[[], ModelArtsHook]) -> ModelArtsHook:
    hook = factory()
    _ = hook.config
    return hook


def build_failure_digest(
    job: TrainingJob | dict[str, Any],
    *,
    training_job_id: str,
    hook_factory: Callable[[], ModelArtsHook],
    tail_lines: int = DEFAULT_DIGEST_TAIL_LINES,
    deadline: float = DEFAULT_DIGEST_DEADLINE,
) -> FailureDigest:
    """Build the digest of a failed job from its body plus the events and log tails fetched now.

    :param job: the job body (``GET .../training-jobs/{id}``).
    :param training_job_id: the job id.
    :param hook_factory: makes one hook per part (one attempt, short timeout), called in threads.
    :param tail_lines: log lines per failed worker (0 to 500).
    :param deadline: seconds after which parts still being fetched are reported as unavailable.
    """
    if isinstance(tail_lines, bool) or not isinstance(tail_lines, int) or not 0 <= tail_lines <= 500:
        raise ModelArtsValidationError(f"tail_lines must be an integer from 0 to 500, got {tail_lines!r}")
    view = TrainingJob.from_api(job)
    reported = view.reported_phase
    digest = FailureDigest(
        training_job_id=training_job_id,
        phase=reported if isinstance(reported, str) else None,
        secondary_phase=view.secondary_phase,
        failed_workers=failed_workers(view),
        end_reason=_end_reason(view),
    )
    known = set(view.tasks)
    tail_of = [w["task"] for w in digest.failed_workers if w["task"] in known][:_MAX_TAIL_WORKERS]
    parts: dict[str, Callable[[], Any]] = {}
    try:
        # Hooks are made (and read their connection) here: connection lookups in a task go through
        # the task supervisor, which is not for use from other threads.
        hook = _ready_hook(hook_factory)
        parts["events"] = lambda: _events(hook, training_job_id)
        for worker in tail_of if tail_lines else []:
            worker_hook = _ready_hook(hook_factory)
            parts[f"log tail of {worker}"] = lambda w=worker, h=worker_hook: _tail(  # type: ignore[misc]
                h, training_job_id, w, tail_lines
            )
    except Exception as err:
        digest.unavailable["events and log tails"] = _clip(f"{type(err).__name__}: {err}")
        return digest
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=min(4, len(parts)))
    try:
        futures = {name: pool.submit(fn) for name, fn in parts.items()}
        concurrent.futures.wait(futures.values(), timeout=deadline)
        for name, future in futures.items():
            if not future.done():
                digest.unavailable[name] = f"not fetched within {deadline:g} s"
            elif (failure := future.exception()) is not None:
                digest.unavailable[name] = _clip(f"{type(failure).__name__}: {failure}")
            elif name == "events":
                digest.events = future.result()
            else:
                digest.log_tails[name.removeprefix("log tail of ")] = future.result()
    finally:
        # Never wait for a slow part: its thread ends on its own request timeout.
        pool.shutdown(wait=False, cancel_futures=True)
    return digest
