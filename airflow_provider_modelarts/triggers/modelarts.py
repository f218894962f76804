"""Trigger that waits, in the triggerer, for a ModelArts training job to reach a terminal phase."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_provider_modelarts.connection import DEFAULT_CONN_ID, validate_resource_id
from airflow_provider_modelarts.exceptions import (
    ModelArtsApiError,
    ModelArtsAuthError,
    ModelArtsError,
    ModelArtsNotFoundError,
    ModelArtsResponseError,
    ModelArtsValidationError,
)
from airflow_provider_modelarts.hooks.modelarts_async import ModelArtsAsyncHook, shared_hooks
from airflow_provider_modelarts.log_stream import (
    DEFAULT_STREAM_MAX_BYTES,
    AsyncLogStreamer,
    validate_stream_args,
)
from airflow_provider_modelarts.states import DEFAULT_FAILURE_PHASES, DEFAULT_SUCCESS_PHASES
from airflow_provider_modelarts.training_job import TrainingJob
from airflow_provider_modelarts.triggers.events import ModelArtsTrainingJobEventTrigger

__all__ = [
    "ModelArtsTrainingJobEventTrigger",
    "ModelArtsTrainingJobTrigger",
    "is_transient_error",
    "shared_hooks",
]


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


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_args(
    *,
    training_job_id: object,
    modelarts_conn_id: object,
    poll_interval: object,
    end_time: object,
    phases: tuple[object, object],
) -> None:
    """Reject bad arguments when the trigger is built (in the worker, before it defers)."""
    validate_resource_id(training_job_id, "training_job_id")
    if not isinstance(modelarts_conn_id, str) or not modelarts_conn_id:
        raise ModelArtsValidationError(
            f"modelarts_conn_id must be a non-empty string, got {modelarts_conn_id!r:.80}"
        )
    if not _is_number(poll_interval) or not 0 <= poll_interval <= 86_400:  # type: ignore[operator]
        raise ModelArtsValidationError(
            f"poll_interval must be a number of seconds from 0 to 86400, got {poll_interval!r}"
        )
    if end_time is not None and not _is_number(end_time):
        raise ModelArtsValidationError(f"end_time must be None or epoch seconds, got {end_time!r:.80}")
    for value in phases:
        if value is not None and (isinstance(value, str) or not all(isinstance(p, str) for p in value)):  # type: ignore[attr-defined]
            raise ModelArtsValidationError("success_phases and failure_phases must be lists of phase names")


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

    def __init__(
        self,
        *,
        training_job_id: str,
        modelarts_conn_id: str = DEFAULT_CONN_ID,
        poll_interval: float = 30,
        end_time: float | None = None,
        success_phases: list[str] | None = None,
        failure_phases: list[str] | None = None,
        stream_logs: bool = False,
        stream_log_tasks: list[str] | None = None,
        stream_max_bytes: int = DEFAULT_STREAM_MAX_BYTES,
        log_stream_state: dict[str, Any] | None = None,
    ) -> None:
        _check_args(
            training_job_id=training_job_id,
            modelarts_conn_id=modelarts_conn_id,
            poll_interval=poll_interval,
            end_time=end_time,
            phases=(success_phases, failure_phases),
        )
        validate_stream_args(
            stream_logs=stream_logs, stream_log_tasks=stream_log_tasks, stream_max_bytes=stream_max_bytes
        )
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

    async def _stream(self, job: TrainingJob, in_flight: asyncio.Semaphore, *, final: bool) -> None:
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
                    body = await hook.get_training_job(self.training_job_id)
                job = TrainingJob.from_api(body)
                outcome = job.outcome(
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
