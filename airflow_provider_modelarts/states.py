"""Training-job phases (``status.phase``), what they mean, and what one look at a phase means for a waiter."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum

from airflow_provider_modelarts.exceptions import ModelArtsResponseError

__all__ = [
    "DEFAULT_FAILURE_PHASES",
    "DEFAULT_SUCCESS_PHASES",
    "TERMINAL_PHASES",
    "JobOutcome",
    "TrainingJobPhase",
    "evaluate_phase",
]


class TrainingJobPhase(str, Enum):
    """Level-1 status of a ModelArts training job (the complete documented set)."""

    CREATING = "Creating"
    PENDING = "Pending"
    RUNNING = "Running"
    TERMINATING = "Terminating"
    COMPLETED = "Completed"
    FAILED = "Failed"
    TERMINATED = "Terminated"
    ABNORMAL = "Abnormal"

    @classmethod
    def parse(cls, value: object, *, training_job_id: str | None = None) -> TrainingJobPhase:
        """Return the phase for ``value``; an unknown value is a clear error, never a silent loop."""
        try:
            return cls(value)
        except ValueError:
            where = f" of training job {training_job_id}" if training_job_id else ""
            known = ", ".join(p.value for p in cls)
            raise ModelArtsResponseError(
                f"Unknown training job phase {value!r}{where}; known phases: {known}"
            ) from None

    @classmethod
    def known(cls, value: object) -> TrainingJobPhase | None:
        """The phase for ``value``, or ``None`` when it is not a documented phase."""
        try:
            return cls(value)
        except ValueError:
            return None

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_PHASES


TERMINAL_PHASES = frozenset(
    {
        TrainingJobPhase.COMPLETED,
        TrainingJobPhase.FAILED,
        TrainingJobPhase.TERMINATED,
        TrainingJobPhase.ABNORMAL,
    }
)

DEFAULT_SUCCESS_PHASES: tuple[str, ...] = (TrainingJobPhase.COMPLETED.value,)
"""Phases that end a wait successfully unless told otherwise."""
DEFAULT_FAILURE_PHASES: tuple[str, ...] = (
    TrainingJobPhase.FAILED.value,
    TrainingJobPhase.ABNORMAL.value,
    TrainingJobPhase.TERMINATED.value,
)
"""Phases that end a wait with a failure unless told otherwise."""


@dataclass(frozen=True)
class JobOutcome:
    """What one look at a training job means for a waiter.

    :param state: ``"success"``, ``"failed"`` or ``"running"``.
    :param phase: the job's ``status.phase`` as ModelArts reported it.
    :param message: a sentence for logs and events.
    """

    state: str
    phase: str
    message: str

    @property
    def is_done(self) -> bool:
        return self.state != "running"


def evaluate_phase(
    reported: object,
    *,
    training_job_id: str,
    success_phases: Iterable[str],
    failure_phases: Iterable[str],
) -> JobOutcome:
    """Classify a reported ``status.phase``; the single status check shared by the sensor and the trigger.

    :param reported: ``status.phase`` as ModelArts sent it (``None``: missing).
    :param training_job_id: the job id, for messages.
    :param success_phases: phases that end the wait successfully.
    :param failure_phases: phases that end the wait with a failure.
    :raises ModelArtsResponseError: the phase is missing or unknown, or it is terminal but listed in
        neither ``success_phases`` nor ``failure_phases`` (waiting longer could never end).
    """
    if reported is None:
        raise ModelArtsResponseError(f"Training job {training_job_id}: the response has no status.phase")
    phase = TrainingJobPhase.parse(reported, training_job_id=training_job_id)
    success = {str(p) for p in success_phases}
    failure = {str(p) for p in failure_phases}
    if phase.value in success:
        return JobOutcome(
            "success", phase.value, f"Training job {training_job_id} reached phase {phase.value}"
        )
    if phase.value in failure:
        return JobOutcome(
            "failed", phase.value, f"Training job {training_job_id} ended in phase {phase.value}"
        )
    if phase.is_terminal:
        raise ModelArtsResponseError(
            f"Training job {training_job_id} ended in phase {phase.value}, which is in neither "
            f"success_phases {sorted(success)} nor failure_phases {sorted(failure)}"
        )
    return JobOutcome("running", phase.value, f"Training job {training_job_id} is {phase.value}")
