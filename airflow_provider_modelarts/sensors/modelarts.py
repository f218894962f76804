"""Sensor that waits for a ModelArts training job and hands its log links to downstream tasks."""

from __future__ import annotations

import time
from collections.abc import Collection, Sequence
from datetime import timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.providers.common.compat.sdk import (
    AirflowException,
    AirflowFailException,
    BaseOperatorLink,
    BaseSensorOperator,
    PokeReturnValue,
    conf,
    mask_secret,
)

from airflow_provider_modelarts.digest import (
    DEFAULT_DIGEST_TAIL_LINES,
    DEFAULT_PART_TIMEOUT,
    FailureDigest,
    build_failure_digest,
)
from airflow_provider_modelarts.exceptions import ModelArtsJobFailedError, ModelArtsValidationError
from airflow_provider_modelarts.links.modelarts import (
    ModelArtsTaskLogPreviewLink,
    ModelArtsTrainingJobConsoleLink,
    persist_training_job_links,
)
from airflow_provider_modelarts.log_stream import (
    DEFAULT_STREAM_MAX_BYTES,
    ContextLogStream,
    LogStreamState,
    load_stream_state,
    save_stream_state,
    validate_stream_args,
)
from airflow_provider_modelarts.triggers.modelarts import (
    DEFAULT_FAILURE_PHASES,
    DEFAULT_SUCCESS_PHASES,
    JobOutcome,
    ModelArtsTrainingJobTrigger,
    evaluate_training_job,
)

if TYPE_CHECKING:
    from airflow.providers.common.compat.sdk import Context

    from airflow_provider_modelarts.hooks.modelarts import ModelArtsHook

LOG_URL_TYPES = ("preview", "download")
LOG_URLS_XCOM_KEY = "log_urls"


class ModelArtsTrainingJobFailed(ModelArtsJobFailedError, AirflowFailException):
    """The watched training job ended in a failure phase.

    An :class:`AirflowFailException`, so the sensor fails without retries (looking again at a job
    that has already failed cannot change the answer), and a :class:`ModelArtsJobFailedError`, so
    callbacks find ``training_job_id``, ``phase`` and ``failed_tasks`` on ``context["exception"]``.

    ``digest`` is the failure digest (:meth:`FailureDigest.to_dict`: phase, secondary phase, failed
    workers, end reason, latest Error/Warning events, log tails, parts not available) or None;
    ``end_reason`` and ``events`` repeat two of its parts.
    """

    def __init__(
        self,
        message: str,
        *,
        training_job_id: str,
        phase: str,
        failed_tasks: list[dict[str, Any]],
        digest: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message, training_job_id=training_job_id, phase=phase, failed_tasks=failed_tasks)
        self.digest = digest
        self.end_reason = (digest or {}).get("end_reason")
        self.events = list((digest or {}).get("events") or [])


def training_job_tasks(job: dict[str, Any]) -> list[str]:
    """The job's worker task ids (``status.tasks``), the ``task_id`` values of the log APIs."""
    tasks = (job.get("status") or {}).get("tasks") or []
    return [str(t) for t in tasks]


def failed_task_statuses(job: dict[str, Any]) -> list[dict[str, Any]]:
    """``status.task_statuses`` entries with a non-zero exit code (all of them if none is non-zero)."""
    statuses = [s for s in (job.get("status") or {}).get("task_statuses") or [] if isinstance(s, dict)]
    failed = [s for s in statuses if s.get("exit_code") not in (0, None)]
    return failed or statuses


def describe_failure(training_job_id: str, phase: str, job: dict[str, Any]) -> str:
    """A failure message naming the job, its phase and each failed task's exit code and message."""
    parts = [f"ModelArts training job {training_job_id} ended in phase {phase}"]
    secondary = (job.get("status") or {}).get("secondary_phase")
    if secondary and secondary != phase:
        parts[0] += f" ({secondary})"
    for status in failed_task_statuses(job):
        message = str(status.get("message") or "").strip() or "no message"
        parts.append(f"task {status.get('task')}: exit code {status.get('exit_code')}, {message}")
    return "; ".join(parts)


def fetch_log_urls(
    hook: ModelArtsHook, training_job_id: str, task_ids: Sequence[str], log_url_type: str
) -> dict[str, dict[str, Any]]:
    """Ask ModelArts for one temporary OBS log link per task, with its expiry.

    :return: ``{task_id: {"url", "type", "expires_at"}}``; ``expires_at`` is ISO 8601 in UTC.
    """
    urls: dict[str, dict[str, Any]] = {}
    for task_id in task_ids:
        url = hook.get_task_log_url(training_job_id, task_id, download=log_url_type == "download")
        mask_secret(url)
        expires_at = hook.log_url_expires_at(url)
        urls[task_id] = {"url": url, "type": log_url_type, "expires_at": expires_at.isoformat()}
    return urls


class ModelArtsTrainingJobSensor(BaseSensorOperator):
    """Wait for a ModelArts training job to finish, then push its log links to XCom.

    Works in ``poke``, ``reschedule`` and deferrable mode; all three use the same status check
    (:func:`~airflow_provider_modelarts.triggers.modelarts.evaluate_training_job`). In deferrable mode
    the state is checked once before deferring and the sensor finishes at once if the job is
    already terminal.

    On success the return value is ``{"training_job_id", "phase", "tasks", "log_urls"}`` and
    ``log_urls`` (``{task_id: {"url", "type", "expires_at"}}``) is also pushed under the XCom key
    ``log_urls``. Links are fetched after the job is terminal, so they are as fresh as possible; they
    expire after about five minutes (``expires_at``). On a failure phase the links are pushed first,
    then the sensor fails (no retries) with a message naming the job, the phase and each failed
    task's exit code and message. An unknown phase, or a terminal phase listed in neither
    ``success_phases`` nor ``failure_phases``, fails the sensor with a clear error.

    :param training_job_id: the training job to wait for. (templated)
    :param modelarts_conn_id: the ``modelarts`` connection. (templated)
    :param success_phases: phases that mean success. (templated)
    :param failure_phases: phases that mean failure; ``Terminated`` is one by default. (templated)
    :param push_log_urls: fetch the log links at the end and push them to XCom.
    :param log_url_type: ``"preview"`` (text/plain link) or ``"download"`` (attachment). (templated)
    :param deferrable: wait in the triggerer instead of a worker slot.
    :param enable_log_preview_link: add the extra link that mints a fresh log preview link. Off by
        default: that link opens the log without authentication to anyone who can see the DAG.
    :param stream_logs: while the job runs, show each new line of the streamed workers' logs in this
        task's log as ``[worker-0] <line>`` (about one poll interval behind). See docs/sensor.md.
    :param stream_log_tasks: workers to stream; by default the first worker plus every worker that
        exits with a non-zero code, which keeps a 64-worker job readable.
    :param stream_max_bytes: most bytes shown per worker per poll; the rest is skipped with a marker line.
    :param digest_tail_lines: log lines per failed worker in the failure digest (0 for none).
    """

    template_fields: Sequence[str] = (
        "training_job_id",
        "modelarts_conn_id",
        "success_phases",
        "failure_phases",
        "log_url_type",
    )
    ui_color = "#e8f1ff"
    operator_extra_links: Collection[BaseOperatorLink] = (ModelArtsTrainingJobConsoleLink(),)
    modelarts_link_data: dict[str, Any] | None = None
    """What the extra links show, once this run has read the job (see ``LINK_DATA_ATTRIBUTE``)."""

    def __init__(
        self,
        *,
        training_job_id: str,
        modelarts_conn_id: str = "modelarts_default",
        success_phases: Sequence[str] = DEFAULT_SUCCESS_PHASES,
        failure_phases: Sequence[str] = DEFAULT_FAILURE_PHASES,
        push_log_urls: bool = True,
        log_url_type: str = "preview",
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        enable_log_preview_link: bool = False,
        stream_logs: bool = True,
        stream_log_tasks: list[str] | None = None,
        stream_max_bytes: int = DEFAULT_STREAM_MAX_BYTES,
        digest_tail_lines: int = DEFAULT_DIGEST_TAIL_LINES,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.digest_tail_lines = digest_tail_lines
        self.stream_logs = stream_logs
        self.stream_log_tasks = stream_log_tasks
        self.stream_max_bytes = stream_max_bytes
        self._log_stream: ContextLogStream | None = None
        self.training_job_id = training_job_id
        self.modelarts_conn_id = modelarts_conn_id
        self.success_phases = success_phases
        self.failure_phases = failure_phases
        self.push_log_urls = push_log_urls
        self.log_url_type = log_url_type
        self.deferrable = deferrable
        self.enable_log_preview_link = enable_log_preview_link
        if enable_log_preview_link:
            self.operator_extra_links = (ModelArtsTrainingJobConsoleLink(), ModelArtsTaskLogPreviewLink())

    @cached_property
    def hook(self) -> ModelArtsHook:
        from airflow_provider_modelarts.hooks.modelarts import ModelArtsHook

        return ModelArtsHook(self.modelarts_conn_id)

    def _validate(self) -> None:
        if self.log_url_type not in LOG_URL_TYPES:
            raise ValueError(f"log_url_type must be one of {LOG_URL_TYPES}, not {self.log_url_type!r}")
        if isinstance(self.success_phases, str) or isinstance(self.failure_phases, str):
            raise TypeError("success_phases and failure_phases must be lists of phase names, not strings")
        if (
            isinstance(self.digest_tail_lines, bool)
            or not isinstance(self.digest_tail_lines, int)
            or not 0 <= self.digest_tail_lines <= 500
        ):
            raise ModelArtsValidationError(
                f"digest_tail_lines must be an integer from 0 to 500, got {self.digest_tail_lines!r}"
            )
        validate_stream_args(
            stream_logs=self.stream_logs,
            stream_log_tasks=self.stream_log_tasks,
            stream_max_bytes=self.stream_max_bytes,
        )

    def _emit_log_line(self, line: str) -> None:
        self.log.info("%s", line)

    def _stream(self, context: Context, job: dict[str, Any], *, final: bool) -> None:
        if not self.stream_logs:
            return
        if self._log_stream is None:
            self._log_stream = ContextLogStream(
                hook=self.hook,
                training_job_id=self.training_job_id,
                stream_log_tasks=self.stream_log_tasks,
                max_bytes=self.stream_max_bytes,
                emit=self._emit_log_line,
                fresh_process_per_poll=self.mode == "reschedule",
            )
        self._log_stream.poll(context, job, final=final)

    def _outcome(self, job: dict[str, Any]) -> JobOutcome:
        return evaluate_training_job(
            job,
            training_job_id=self.training_job_id,
            success_phases=self.success_phases,
            failure_phases=self.failure_phases,
        )

    def execute(self, context: Context) -> Any:
        self._validate()
        persist_training_job_links(
            context,
            training_job_id=self.training_job_id,
            console_url=self.hook.console_url(self.training_job_id),
            modelarts_conn_id=self.modelarts_conn_id,
        )
        if not self.deferrable:
            return super().execute(context)
        job = self.hook.get_training_job(self.training_job_id)
        outcome = self._outcome(job)
        if outcome.is_done:
            self.log.info("%s; not deferring", outcome.message)
            self._stream(context, job, final=True)
            return self._finish(context, job, outcome)
        self.log.info("%s; deferring", outcome.message)
        saved = load_stream_state(context, self.training_job_id)[0] if self.stream_logs else None
        self.defer(
            trigger=ModelArtsTrainingJobTrigger(
                training_job_id=self.training_job_id,
                modelarts_conn_id=self.modelarts_conn_id,
                poll_interval=self.poke_interval,
                end_time=time.time() + self.timeout,
                success_phases=list(self.success_phases),
                failure_phases=list(self.failure_phases),
                stream_logs=self.stream_logs,
                stream_log_tasks=self.stream_log_tasks,
                stream_max_bytes=self.stream_max_bytes,
                log_stream_state=saved,
            ),
            method_name="execute_complete",
            timeout=timedelta(seconds=self.timeout) + timedelta(minutes=5),
        )

    def poke(self, context: Context) -> PokeReturnValue | bool:
        job = self.hook.get_training_job(self.training_job_id)
        outcome = self._outcome(job)
        self.log.info("%s", outcome.message)
        self._stream(context, job, final=outcome.is_done)
        if not outcome.is_done:
            return False
        return PokeReturnValue(is_done=True, xcom_value=self._finish(context, job, outcome))

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> Any:
        """Finish after the trigger fired; reject a missing, ``error`` or ``timeout`` event."""
        self._validate()
        if not event:
            raise AirflowException(f"Training job {self.training_job_id}: the trigger sent no event")
        status = event.get("status")
        message = event.get("message") or f"trigger ended with status {status!r}"
        if status == "timeout":
            raise AirflowFailException(message)
        if self.stream_logs and isinstance(event.get("log_stream_state"), dict):
            save_stream_state(
                context, self.training_job_id, LogStreamState.from_dict(event["log_stream_state"])
            )
        if status not in ("success", "failed"):
            raise AirflowException(message)
        # A resumed task runs in a new process: store the links' data again for this one.
        persist_training_job_links(
            context,
            training_job_id=self.training_job_id,
            console_url=self.hook.console_url(self.training_job_id),
            modelarts_conn_id=self.modelarts_conn_id,
        )
        job = self.hook.get_training_job(self.training_job_id)
        return self._finish(context, job, self._outcome(job))

    def _digest_hook(self) -> ModelArtsHook:
        from airflow_provider_modelarts.hooks.modelarts import ModelArtsHook

        # One attempt with a short timeout per part: the digest never delays the failure much.
        return ModelArtsHook(self.modelarts_conn_id, max_retries=0, request_timeout=DEFAULT_PART_TIMEOUT)

    def _failure_digest(self, job: dict[str, Any]) -> FailureDigest:
        return build_failure_digest(
            job,
            training_job_id=self.training_job_id,
            hook_factory=self._digest_hook,
            tail_lines=self.digest_tail_lines,
        )

    def _finish(self, context: Context, job: dict[str, Any], outcome: JobOutcome) -> dict[str, Any]:
        tasks = training_job_tasks(job)
        if self.enable_log_preview_link:
            persist_training_job_links(
                context,
                training_job_id=self.training_job_id,
                console_url=self.hook.console_url(self.training_job_id),
                modelarts_conn_id=self.modelarts_conn_id,
                task_ids=tasks,
            )
        if outcome.state == "failed":
            if self.push_log_urls:
                try:
                    log_urls = fetch_log_urls(self.hook, self.training_job_id, tasks, self.log_url_type)
                    context["ti"].xcom_push(key=LOG_URLS_XCOM_KEY, value=log_urls)
                except Exception as e:
                    # The job failure is the news; a missing link must not hide it.
                    self.log.warning("Could not fetch the log links of the failed job: %s", e)
            digest = self._failure_digest(job)
            self.log.error("%s", digest.render())
            raise ModelArtsTrainingJobFailed(
                describe_failure(self.training_job_id, outcome.phase, job) + "\n" + digest.render(),
                training_job_id=self.training_job_id,
                phase=outcome.phase,
                failed_tasks=failed_task_statuses(job),
                digest=digest.to_dict(),
            )
        log_urls = {}
        if self.push_log_urls:
            log_urls = fetch_log_urls(self.hook, self.training_job_id, tasks, self.log_url_type)
            context["ti"].xcom_push(key=LOG_URLS_XCOM_KEY, value=log_urls)
            self.log.info(
                "Pushed %d %s log link(s) under XCom key %r, expiring at %s",
                len(log_urls),
                self.log_url_type,
                LOG_URLS_XCOM_KEY,
                min((u["expires_at"] for u in log_urls.values()), default="-"),
            )
        return {
            "training_job_id": self.training_job_id,
            "phase": outcome.phase,
            "tasks": tasks,
            "log_urls": log_urls,
        }
