"""Training-job phases (``status.phase``) and what they mean."""

from __future__ import annotations

from enum import Enum

from airflow_provider_modelarts.exceptions import ModelArtsResponseError


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

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_PHASES

    @property
    def is_success(self) -> bool:
        return self is TrainingJobPhase.COMPLETED


TERMINAL_PHASES = frozenset(
    {
        TrainingJobPhase.COMPLETED,
        TrainingJobPhase.FAILED,
        TrainingJobPhase.TERMINATED,
        TrainingJobPhase.ABNORMAL,
    }
)
FAILURE_PHASES = frozenset({TrainingJobPhase.FAILED, TrainingJobPhase.TERMINATED, TrainingJobPhase.ABNORMAL})
