"""A checked, read-only view of a ModelArts training-job body.

The API body (``GET /v2/{project_id}/training-jobs/{id}`` or one ``items[]`` entry of a search) is
untrusted: :meth:`TrainingJob.from_api` reads it once, checks every value that can reach a path, a
URL or a count, and every other module reads the view instead of the raw dict.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from airflow_provider_modelarts.connection import validate_resource_id
from airflow_provider_modelarts.exceptions import ModelArtsUnexpectedJobError, ModelArtsValidationError
from airflow_provider_modelarts.states import JobOutcome, TrainingJobPhase, evaluate_phase

__all__ = ["MAX_TIME_MS", "TrainingJob", "epoch_ms", "evaluate_training_job"]

MAX_TIME_MS = 4_102_444_800_000  # 2100-01-01: later (or negative) times are bogus


def epoch_ms(value: Any) -> int | None:
    """``value`` as epoch ms if it is a plausible time (int, 0 < t < 2100), else ``None``."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < MAX_TIME_MS:
        return None
    return value


def _end_time_ms(status: Mapping[str, Any]) -> int | None:
    records = status.get("running_records")
    if isinstance(records, list) and records and isinstance(records[-1], dict):
        end_at = records[-1].get("end_at")
        if isinstance(end_at, int) and not isinstance(end_at, bool):
            end = epoch_ms(end_at * 1000)
            if end is not None:
                return end
    start = epoch_ms(status.get("start_time"))
    duration = status.get("duration")
    if start is None or isinstance(duration, bool) or not isinstance(duration, int) or duration < 0:
        return None
    return epoch_ms(start + duration)


def _check_tasks(raw: Any) -> tuple[tuple[str, ...], str | None]:
    """The valid, distinct task ids of ``status.tasks`` and the first problem found (or ``None``)."""
    if raw is None:
        return (), None
    if not isinstance(raw, list):
        return (), f"status.tasks of the training job is not a list: {raw!r:.80}"
    tasks: list[str] = []
    problem: str | None = None
    for index, task in enumerate(raw):
        if not isinstance(task, str):
            problem = problem or f"status.tasks[{index}] is not a task name: {task!r:.80}"
            continue
        try:
            validate_resource_id(task, f"status.tasks[{index}]")
        except ModelArtsValidationError as err:
            problem = problem or str(err)
            continue
        if task in tasks:
            problem = problem or f"status.tasks names task {task!r} twice"
            continue
        tasks.append(task)
    return tuple(tasks), problem


def _dicts(raw: Any) -> tuple[dict[str, Any], ...]:
    return tuple(item for item in raw if isinstance(item, dict)) if isinstance(raw, list) else ()


def _check_id(metadata: Mapping[str, Any], requested_id: str | None) -> str | None:
    raw_id = metadata.get("id")
    if requested_id is not None and raw_id != requested_id:
        raise ModelArtsUnexpectedJobError(requested=requested_id, received=str(raw_id))
    if raw_id is None or raw_id == "":
        return None
    return validate_resource_id(raw_id, "metadata.id of the training job")


@dataclass(frozen=True)
class TrainingJob:
    """What the provider reads of a training job, checked once.

    :param id: ``metadata.id``, a valid resource id; ``None`` when the body has none.
    :param name: ``metadata.name`` as sent when it is a non-empty string, else ``None`` (check it
        with ``validate_resource_id`` before it becomes a path).
    :param phase: ``status.phase`` when it is a documented phase, else ``None``.
    :param reported_phase: ``status.phase`` as sent (for messages and :meth:`outcome`).
    :param secondary_phase: ``status.secondary_phase`` when it is a string.
    :param tasks: the valid, distinct task ids of ``status.tasks`` (the log APIs' ``task_id``).
    :param task_problem: why ``status.tasks`` cannot be trusted as a whole, or ``None``.
    :param task_statuses: the ``status.task_statuses`` entries that are objects.
    :param running_records: the ``status.running_records`` entries that are objects.
    :param create_time_ms: ``metadata.create_time`` (epoch ms) when plausible.
    :param end_time_ms: the last ``running_records[].end_at``, else ``start_time + duration``.
    :param has_metadata: whether the body has a ``metadata`` object at all.
    """

    id: str | None
    name: str | None = None
    phase: TrainingJobPhase | None = None
    reported_phase: Any = None
    secondary_phase: str | None = None
    tasks: tuple[str, ...] = ()
    task_problem: str | None = field(default=None, repr=False)
    task_statuses: tuple[dict[str, Any], ...] = field(default=(), repr=False)
    running_records: tuple[dict[str, Any], ...] = field(default=(), repr=False)
    create_time_ms: int | None = None
    end_time_ms: int | None = None
    has_metadata: bool = field(default=True, repr=False)

    @classmethod
    def from_api(cls, body: Any, *, requested_id: str | None = None) -> TrainingJob:
        """Read a job body.

        :param body: the body as ModelArts sent it (a view is returned as it is).
        :param requested_id: the id that was asked for; the body must describe that job.
        :raises ModelArtsUnexpectedJobError: the body describes another job than ``requested_id``.
        :raises ModelArtsValidationError: ``metadata.id`` is not a valid resource id.
        """
        if isinstance(body, TrainingJob):
            if requested_id is not None and body.id != requested_id:
                raise ModelArtsUnexpectedJobError(requested=requested_id, received=str(body.id))
            return body
        raw_metadata = body.get("metadata") if isinstance(body, dict) else None
        raw_status = body.get("status") if isinstance(body, dict) else None
        metadata: Mapping[str, Any] = raw_metadata if isinstance(raw_metadata, dict) else {}
        status: Mapping[str, Any] = raw_status if isinstance(raw_status, dict) else {}
        raw_name = metadata.get("name")
        reported = status.get("phase")
        secondary = status.get("secondary_phase")
        tasks, problem = _check_tasks(status.get("tasks"))
        return cls(
            id=_check_id(metadata, requested_id),
            name=raw_name if isinstance(raw_name, str) and raw_name else None,
            phase=TrainingJobPhase.known(reported),
            reported_phase=reported,
            secondary_phase=secondary if isinstance(secondary, str) else None,
            tasks=tasks,
            task_problem=problem,
            task_statuses=_dicts(status.get("task_statuses")),
            running_records=_dicts(status.get("running_records")),
            create_time_ms=epoch_ms(metadata.get("create_time")),
            end_time_ms=_end_time_ms(status),
            has_metadata=isinstance(raw_metadata, dict),
        )

    def checked_tasks(self) -> list[str]:
        """``status.tasks``, all of them safe to use as path segments.

        :raises ModelArtsValidationError: ``status.tasks`` is not a list, or holds a null, a
            non-string, a name that cannot be a path segment, or the same name twice.
        """
        if self.task_problem is not None:
            raise ModelArtsValidationError(self.task_problem)
        return list(self.tasks)

    @property
    def failed_task_statuses(self) -> list[dict[str, Any]]:
        """``status.task_statuses`` entries with a non-zero exit code."""
        return [s for s in self.task_statuses if s.get("exit_code") not in (0, None)]

    @property
    def end_reason(self) -> tuple[Any, Any] | None:
        """``(end_reason, end_related_task)`` of the last running record that has a reason."""
        for record in reversed(self.running_records):
            if record.get("end_reason"):
                return record["end_reason"], record.get("end_related_task")
        return None

    def outcome(
        self, *, training_job_id: str, success_phases: Iterable[str], failure_phases: Iterable[str]
    ) -> JobOutcome:
        """What this look at the job means for a waiter (see :func:`~.states.evaluate_phase`)."""
        return evaluate_phase(
            self.reported_phase,
            training_job_id=training_job_id,
            success_phases=success_phases,
            failure_phases=failure_phases,
        )


def evaluate_training_job(
    job: TrainingJob | Mapping[str, Any],
    *,
    training_job_id: str,
    success_phases: Iterable[str],
    failure_phases: Iterable[str],
) -> JobOutcome:
    """Classify a training job (a view or a body); the one status check of the sensor and the trigger.

    :raises ModelArtsResponseError: the phase is missing or unknown, or it is terminal but listed in
        neither ``success_phases`` nor ``failure_phases`` (waiting longer could never end).
    """
    return TrainingJob.from_api(job).outcome(
        training_job_id=training_job_id, success_phases=success_phases, failure_phases=failure_phases
    )
