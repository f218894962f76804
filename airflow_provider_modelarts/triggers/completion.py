"""What a deferred operator or sensor does with the event its trigger sent: one rule for both."""

from __future__ import annotations

from collections.abc import Collection
from datetime import timedelta
from typing import Any

from airflow_provider_modelarts.exceptions import ModelArtsTriggerEventError, ModelArtsWaitTimeoutError

__all__ = ["DEFER_TIMEOUT_GRACE", "defer_timeout", "validate_execute_complete_event"]

DEFER_TIMEOUT_GRACE = timedelta(minutes=5)
"""Added to the wait deadline for Airflow's own ``defer(timeout=...)``: the trigger's ``timeout`` event,
sent at the deadline, comes first and says more; Airflow's timeout only catches a trigger that never ran."""


def defer_timeout(timeout: float | None) -> timedelta | None:
    """The ``timeout`` to pass to ``defer()`` for a wait deadline of ``timeout`` seconds (``None``: none)."""
    return None if timeout is None else timedelta(seconds=timeout) + DEFER_TIMEOUT_GRACE


def validate_execute_complete_event(
    event: dict[str, Any] | None, *, training_job_id: str, accepted: Collection[str] = ("success",)
) -> dict[str, Any]:
    """Check the event a :class:`~.modelarts.ModelArtsTrainingJobTrigger` sent, before resuming.

    :param event: the event passed to ``execute_complete``.
    :param training_job_id: the job waited for, for messages.
    :param accepted: the event statuses the caller goes on with (``success``; the sensor also
        ``failed``, which it reports with the failed workers).
    :return: the event.
    :raises ModelArtsWaitTimeoutError: the wait deadline passed (``timeout``): no retry.
    :raises ModelArtsTriggerEventError: no event, or any other status (``error``...).
    """
    if not event:
        raise ModelArtsTriggerEventError(f"Training job {training_job_id}: the trigger sent no event")
    status = event.get("status")
    if status in accepted:
        return event
    message = (
        f"Training job {training_job_id}: waiting failed ({status}): {event.get('message') or 'no message'}"
    )
    if status == "timeout":
        raise ModelArtsWaitTimeoutError(message)
    raise ModelArtsTriggerEventError(message)
