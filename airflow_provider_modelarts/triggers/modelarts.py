"""Trigger that waits, in the triggerer, for a ModelArts training job to reach a terminal phase."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_provider_modelarts.exceptions import (
    ModelArtsApiError,
    ModelArtsAuthError,
    ModelArtsError,
    ModelArtsNotFoundError,
    ModelArtsResponseError,
)
from airflow_provider_modelarts.hooks.modelarts_async import ModelArtsAsyncHook, shared_hooks
from airflow_provider_modelarts.log_stream import DEFAULT_STREAM_MAX_BYTES, AsyncLogStreamer
from airflow_provider_modelarts.states import TrainingJobPhase
from airflow_provider_modelarts.triggers.events import ModelArtsTrainingJobEventTrigger  # noqa: F401 - re-exported

DEFAULT_SUCCESS_PHASES: tuple[str, ...] = (TrainingJobPhase.COMPLETED.value,)
DEFAULT_FAILURE_PHASES: tuple[str, ...] = (
    TrainingJobPhase.FAILED.value,
    TrainingJobPhase.ABNORMAL.value,
    TrainingJobPhase.TERMINATED.value,
)


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


def evaluate_training_job(
    job: dict[str, Any],
    *,
    training_job_id: str,
    success_phases: Iterable[str],
    failure_phases: Iterable[str],
) -> JobOutcome:
    """Classify a training-job body; the single status check shared by the sensor and the trigger.

    :param job: the body of ``GET /v2/{project_id}/training-jobs/{id}``.
    :param training_job_id: the job id, for messages.
    :param success_phases: phases that end the wait successfully.
    :param failure_phases: phases that end the wait with a failure.
    :raises ModelArtsResponseError: the phase is missing or unknown, or it is terminal but listed in
        neither ``success_phases`` nor ``failure_phases`` (waiting longer could never end).
    """
    status = job.get("status") if isinstance(job, dict) else None
    raw_phase = status.get("phase") if isinstance(status, dict) else None
    if raw_phase is None:
        raise ModelArtsResponseError(f"Training job {training_job_id}: the response has no status.phase")
    phase = TrainingJobPhase.parse(raw_phase, training_job_id=training_job_id)
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


def is_transient_error(error: BaseException) -> bool:
    """Whether a failed status poll is worth repeating (throttling, 5xx, network), not a final answer."""
    if isinstance(error, (ModelArtsAuthError, ModelArtsNotFoundError, ModelArtsResponseError)):
        return False
    if isinstance(error, ModelArtsApiError):
        # No status means the request never got an HTTP answer (connection reset, timeout...).
        return error.is_retryable or error.status_code is None
    if isinstance(error, ModelArtsError):
        return False
    if isinstance(error, (OSError, asyncio.TimeoutError)):
        return True
    try:
        import httpx
    except ImportError:  # pragma: no cover - httpx ships with Airflow
        return False
    return isinstance(error, httpx.TransportError)


def _default_hook_factory(conn_id: str) -> ModelArtsAsyncHook:
    # One attempt per poll: the trigger's own loop is the retry loop, so a throttled or failing
    # API costs one request per poll_interval instead of a burst of backed-off retries.
    return ModelArtsAsyncHook(conn_id, max_retries=0)


class ModelArtsTrainingJobTrigger(BaseTrigger):
    """Poll a ModelArts training job until it reaches a success or failure phase.

    Yields exactly one event, ``{"status", "training_job_id", "phase", "message"}``, where status is
    ``success`` (a success phase), ``failed`` (a failure phase), ``timeout`` (``end_time`` passed) or
    ``error`` (a non-retryable API error such as 401/404, or a phase that can never end the wait).
    Throttling (429), 5xx and network errors are logged and polling continues.

    :param training_job_id: the training job to watch.
    :param modelarts_conn_id: the ``modelarts`` connection.
    :param poll_interval: seconds between status checks.
    :param end_time: epoch seconds after which a ``timeout`` event is sent; ``None`` waits forever.
    :param success_phases: phases that end the wait with ``success``.
    :param failure_phases: phases that end the wait with ``failed``.
    :param stream_logs: show each new log line of the streamed workers in the task log while waiting;
        the event then carries ``log_stream_state``, the position reached.
    :param stream_log_tasks: workers to stream (default: the first and the failed ones).
    :param stream_max_bytes: most bytes shown per worker per poll.
    :param log_stream_state: the position to resume streaming from (a ``LogStreamState.to_dict()``).
    """

    hook_factory = staticmethod(_default_hook_factory)

    def __init__(  # noqa: PLR0917 - the positional signature is a published contract
        self,
        training_job_id: str,
        modelarts_conn_id: str = "modelarts_default",
        poll_interval: float = 30,
        end_time: float | None = None,
        success_phases: list[str] | None = None,
        failure_phases: list[str] | None = None,
        stream_logs: bool = False,
        stream_log_tasks: list[str] | None = None,
        stream_max_bytes: int = DEFAULT_STREAM_MAX_BYTES,
        log_stream_state: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.stream_logs = bool(stream_logs)
        self.stream_log_tasks = list(stream_log_tasks) if stream_log_tasks is not None else None
        self.stream_max_bytes = int(stream_max_bytes)
        self.log_stream_state = log_stream_state
        self._streamer: AsyncLogStreamer | None = None
        self.training_job_id = training_job_id
        self.modelarts_conn_id = modelarts_conn_id
        self.poll_interval = float(poll_interval)
        self.end_time = float(end_time) if end_time is not None else None
        self.success_phases = list(DEFAULT_SUCCESS_PHASES if success_phases is None else success_phases)
        self.failure_phases = list(DEFAULT_FAILURE_PHASES if failure_phases is None else failure_phases)

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            "airflow_provider_modelarts.triggers.modelarts.ModelArtsTrainingJobTrigger",
            {
                "training_job_id": self.training_job_id,
                "modelarts_conn_id": self.modelarts_conn_id,
                "poll_interval": self.poll_interval,
                "end_time": self.end_time,
                "success_phases": list(self.success_phases),
                "failure_phases": list(self.failure_phases),
                "stream_logs": self.stream_logs,
                "stream_log_tasks": self.stream_log_tasks,
                "stream_max_bytes": self.stream_max_bytes,
                "log_stream_state": self.log_stream_state,
            },
        )

    def _event(self, status: str, phase: str | None, message: str) -> TriggerEvent:
        payload: dict[str, Any] = {
            "status": status,
            "training_job_id": self.training_job_id,
            "phase": phase,
            "message": message,
        }
        if self._streamer is not None:
            payload["log_stream_state"] = self._streamer.state.to_dict()
        return TriggerEvent(payload)

    def _start_streaming(self, hook: ModelArtsAsyncHook) -> None:
        self._streamer = AsyncLogStreamer(
            hook=hook,
            training_job_id=self.training_job_id,
            state=self.log_stream_state,
            stream_log_tasks=self.stream_log_tasks,
            max_bytes=self.stream_max_bytes,
            emit=self._emit_log_line,
        )
        positions = {w: c.offset for w, c in self._streamer.state.cursors.items()}
        # Printed each time the trigger starts: after a triggerer restart it appears again, right
        # before the lines shown since this position, so the repeat is visible.
        self.log.info(
            "Streaming the logs of training job %s from byte positions %s",
            self.training_job_id,
            positions or "0",
        )

    def _emit_log_line(self, line: str) -> None:
        self.log.info("%s", line)

    async def _stream(self, job: dict[str, Any], in_flight: asyncio.Semaphore, *, final: bool) -> None:
        if self._streamer is None:
            return
        try:
            async with in_flight:
                await self._streamer.poll(job, final=final)
        except Exception as e:  # streaming is best effort: it never ends the wait
            self.log.warning("Could not stream the logs of training job %s: %s", self.training_job_id, e)

    async def run(self) -> AsyncIterator[TriggerEvent]:
        try:
            shared = shared_hooks.acquire(self.modelarts_conn_id, self.hook_factory)
        except Exception as e:
            yield self._event("error", None, f"Cannot watch training job {self.training_job_id}: {e}")
            return
        try:
            if self.stream_logs:
                self._start_streaming(shared.hook)
            yield await self._wait(shared.hook, shared.in_flight)
        finally:
            await shared_hooks.release(self.modelarts_conn_id)

    async def _wait(self, hook: ModelArtsAsyncHook, in_flight: asyncio.Semaphore) -> TriggerEvent:
        phase: str | None = None
        transient_errors = 0
        while True:
            if self.end_time is not None and time.time() >= self.end_time:
                return self._event(
                    "timeout",
                    phase,
                    f"Timed out waiting for training job {self.training_job_id} (last phase: {phase})",
                )
            try:
                async with in_flight:
                    job = await hook.get_training_job(self.training_job_id)
                outcome = evaluate_training_job(
                    job,
                    training_job_id=self.training_job_id,
                    success_phases=self.success_phases,
                    failure_phases=self.failure_phases,
                )
            except Exception as e:
                if not is_transient_error(e):
                    return self._event(
                        "error", phase, f"Error watching training job {self.training_job_id}: {e}"
                    )
                transient_errors += 1
                self.log.warning(
                    "Transient error #%d polling training job %s, will poll again: %s",
                    transient_errors,
                    self.training_job_id,
                    e,
                )
            else:
                phase = outcome.phase
                await self._stream(job, in_flight, final=outcome.is_done)
                if outcome.is_done:
                    return self._event(outcome.state, outcome.phase, outcome.message)
                self.log.debug("%s", outcome.message)
            delay = self.poll_interval
            if self.end_time is not None:
                delay = max(0.0, min(delay, self.end_time - time.time()))
            await asyncio.sleep(delay)
