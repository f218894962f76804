"""Operators for Huawei Cloud ModelArts training jobs."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from functools import cached_property
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from airflow.providers.common.compat.sdk import BaseOperator, ObjectStoragePath, conf

from airflow_provider_modelarts.connection import DEFAULT_CONN_ID
from airflow_provider_modelarts.exceptions import ModelArtsValidationError, ModelArtsWaitTimeoutError
from airflow_provider_modelarts.hooks.modelarts import ModelArtsHook
from airflow_provider_modelarts.links.modelarts import (
    ModelArtsTrainingJobConsoleLink,
    persist_training_job_links,
)
from airflow_provider_modelarts.log_stream import (
    DEFAULT_STREAM_MAX_BYTES,
    ContextLogStream,
    load_stream_state,
    save_event_stream_state,
    validate_stream_args,
)
from airflow_provider_modelarts.states import TERMINAL_PHASES, TrainingJobPhase
from airflow_provider_modelarts.training_job import TrainingJob
from airflow_provider_modelarts.transfer import (
    CHUNK_SIZE,
    COMPRESSIONS,
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_RETRY_WAIT,
    DEFAULT_STALL_MIN_RATE,
    DEFAULT_STALL_WINDOW,
    ArchiveLayout,
    TrainingJobLogArchiver,
)
from airflow_provider_modelarts.triggers.completion import defer_timeout, validate_execute_complete_event
from airflow_provider_modelarts.triggers.modelarts import ModelArtsTrainingJobTrigger

if TYPE_CHECKING:
    from airflow.providers.common.compat.sdk import Context

__all__ = ["ModelArtsArchiveTaskLogsOperator", "check_destination_uri"]


_EXAMPLES = "file:///data/archive, s3://bucket/prefix or obs://bucket/prefix"


def check_destination_uri(dest: str) -> str:
    """The archive root as an unambiguous URI, or :class:`ModelArtsValidationError` saying how to fix it.

    An absolute local path becomes ``file://`` + path and ``file://localhost/x`` becomes ``file:///x``.
    Rejected: relative paths, ``~`` (never expanded), ``file://host/...`` with another host (two slashes
    make the first path segment the host: ``file://tmp/x`` is not ``/tmp/x``), URIs without a bucket,
    queries or fragments, and ``.`` or ``..`` segments.

    :param dest: the destination as given (a URI or an absolute path).
    """
    parts = urlsplit(dest)
    local = parts.path if parts.scheme.lower() in ("", "file") else ""
    if dest.startswith("~") or parts.netloc.startswith("~") or local.startswith("/~"):
        raise ModelArtsValidationError(
            f"destination {dest!r} uses '~', which is not expanded (and the worker's home directory may "
            f"differ from yours); use an absolute path such as {os.path.expanduser('~/archive')!r} or a URI "
            f"such as {_EXAMPLES}"
        )
    scheme = parts.scheme.lower()
    if not scheme:
        if not dest.startswith("/"):
            raise ModelArtsValidationError(
                f"destination {dest!r} is a relative path (relative to the worker's current directory, "
                f"which varies); use an absolute path or a URI such as {_EXAMPLES}"
            )
        parts, scheme = urlsplit(f"file://{dest}"), "file"
    if parts.query or parts.fragment or dest.endswith(("?", "#")):
        raise ModelArtsValidationError(
            f"destination {dest!r} has a query or fragment ('?' or '#'); use a plain URI such as {_EXAMPLES}"
        )
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise ModelArtsValidationError(
                f"destination {dest!r} names {parts.netloc!r} as the host of a file:// URI, so it would "
                f"not be the path /{parts.netloc}{parts.path}; a local path needs three slashes: "
                f"file:///{parts.netloc}{parts.path}"
            )
        if not parts.path.startswith("/"):
            raise ModelArtsValidationError(
                f"destination {dest!r} is not an absolute file URI; use file:///absolute/path"
            )
    elif not parts.netloc:
        raise ModelArtsValidationError(
            f"destination {dest!r} names no bucket or host after '{scheme}://'; use {scheme}://bucket/prefix"
        )
    if any(segment in (".", "..") for segment in parts.path.split("/")):
        raise ModelArtsValidationError(
            f"destination {dest!r} contains '.' or '..' segments; give the path they lead to"
        )
    if scheme == "file":
        return f"file://{parts.path}"
    return dest


class ModelArtsArchiveTaskLogsOperator(BaseOperator):
    """Archive every task log of a ModelArts training job to object storage, once the job has finished.

    Each log is streamed (constant memory) from its temporary OBS link, resumed with a fresh link and a
    ``Range`` request when the link expires or the connection drops, checked against the announced size,
    hashed (sha256) and only then made visible at its final path. A ``manifest.json`` records, per task,
    the object URI, original size and sha256, the job phase and the archive time. Logs of failed jobs are
    archived as well.

    Layout (default; see ``path_template``/``manifest_template``)::

        {destination}/{training_job_id}/{task_id}.log       (.log.gz with compression="gzip")
        {destination}/{training_job_id}/manifest.json

    Re-runs skip tasks whose manifest entry is complete and whose object still has the recorded size,
    unless ``overwrite=True``. Returns (XCom) ``{"training_job_id", "phase", "manifest", "tasks":
    [{"task_id", "uri", "size", "sha256"}]}``. When ``outlets`` holds assets, their events carry the same
    summary in ``extra``.

    :param training_job_id: the training job. (templated)
    :param destination: archive root: a URI (``file://``, ``s3://``, ``obs://`` or any scheme Airflow's
        ``ObjectStoragePath`` knows) or an ``ObjectStoragePath``; an absolute local path means ``file://``.
        (templated)
    :param destination_conn_id: connection for the destination (an ``aws`` connection for ``s3://``);
        ``obs://`` defaults to ``modelarts_conn_id``. (templated)
    :param task_ids: tasks to archive (e.g. ``["worker-0"]``); ``None`` means every task in
        ``status.tasks``. (templated)
    :param modelarts_conn_id: the ``modelarts`` connection. (templated)
    :param wait_for_completion: wait until the job's phase is terminal (Completed, Failed, Terminated,
        Abnormal); if ``False`` the logs are archived as they are now, marked incomplete in the manifest
        when the job is still running.
    :param deferrable: wait in the triggerer instead of a worker slot.
    :param poll_interval: seconds between status checks while waiting.
    :param timeout: the wait deadline: seconds to wait for the job to finish (in a worker or deferred)
        before failing with :class:`~airflow_provider_modelarts.exceptions.ModelArtsWaitTimeoutError`
        (no retries); ``None`` waits indefinitely. The request timeout is the connection's.
    :param compression: ``None`` or ``"gzip"``.
    :param overwrite: archive again even when the manifest shows an intact archive.
    :param max_workers: task logs copied at the same time.
    :param path_template: object path of a task log relative to ``destination``; fields
        ``{training_job_id}``, ``{task_id}``, ``{job_name}``. (templated)
    :param manifest_template: object path of the manifest relative to ``destination``. (templated)
    :param max_attempts: interruptions (expired link, dropped connection, short body, stall, restart)
        tolerated per log.
    :param retry_wait: no longer used (transport retries are the hook's alone); kept for compatibility.
    :param chunk_size: bytes read at a time.
    :param stream_logs: while waiting for the job, show each new line of the streamed workers' logs in
        this task's log as ``[worker-0] <line>`` (see docs/sensor.md, "Live logs").
    :param stream_log_tasks: workers to stream; by default the first worker plus every worker that
        exits with a non-zero code.
    :param stream_max_bytes: most bytes shown per worker per poll; the rest is skipped with a marker line.
    :param stall_window: seconds over which a log link's rate is measured.
    :param stall_min_rate: bytes per second below which a window is a stall (fresh link, resume);
        ``0`` disables the check.
    """

    template_fields: Sequence[str] = (
        "training_job_id",
        "destination",
        "destination_conn_id",
        "task_ids",
        "modelarts_conn_id",
        "path_template",
        "manifest_template",
    )
    ui_color = "#c7000b"
    operator_extra_links = (ModelArtsTrainingJobConsoleLink(),)
    modelarts_link_data: dict[str, Any] | None = None
    """What the extra links show, once this run has read the job (see ``LINK_DATA_ATTRIBUTE``)."""

    def __init__(
        self,
        *,
        training_job_id: str,
        destination: str | ObjectStoragePath,
        destination_conn_id: str | None = None,
        task_ids: list[str] | None = None,
        modelarts_conn_id: str = DEFAULT_CONN_ID,
        wait_for_completion: bool = True,
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        poll_interval: float = 30,
        timeout: float | None = None,
        compression: str | None = None,
        overwrite: bool = False,
        max_workers: int = 4,
        path_template: str = ArchiveLayout.path_template,
        manifest_template: str = ArchiveLayout.manifest_template,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        retry_wait: float = DEFAULT_RETRY_WAIT,
        chunk_size: int = CHUNK_SIZE,
        stream_logs: bool = True,
        stream_log_tasks: list[str] | None = None,
        stream_max_bytes: int = DEFAULT_STREAM_MAX_BYTES,
        stall_window: float = DEFAULT_STALL_WINDOW,
        stall_min_rate: float = DEFAULT_STALL_MIN_RATE,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.stream_logs = stream_logs
        self.stream_log_tasks = stream_log_tasks
        self.stream_max_bytes = stream_max_bytes
        self.training_job_id = training_job_id
        self.destination = destination
        self.destination_conn_id = destination_conn_id
        self.task_ids = task_ids
        self.modelarts_conn_id = modelarts_conn_id
        self.wait_for_completion = wait_for_completion
        self.deferrable = deferrable
        self.poll_interval = poll_interval
        self.timeout = timeout
        self.compression = compression
        self.overwrite = overwrite
        self.max_workers = max_workers
        self.path_template = path_template
        self.manifest_template = manifest_template
        self.max_attempts = max_attempts
        self.retry_wait = retry_wait
        self.chunk_size = chunk_size
        self.stall_window = stall_window
        self.stall_min_rate = stall_min_rate
        self._archiver: TrainingJobLogArchiver | None = None

    @cached_property
    def hook(self) -> ModelArtsHook:
        return ModelArtsHook(modelarts_conn_id=self.modelarts_conn_id)

    def new_hook(self) -> ModelArtsHook:
        """A hook for one archive worker thread (a ``requests.Session`` is not shared between threads).

        Its log links stay inside the archiver (logged without their query, never in XCom), so they are not
        registered with the secret masker, whose cost grows with every registration.
        """
        return ModelArtsHook(modelarts_conn_id=self.modelarts_conn_id, mask_log_links=False)

    # ---------------------------------------------------------------------------------------------------

    def _validate(self) -> tuple[ObjectStoragePath, ArchiveLayout, list[str] | None]:
        if not isinstance(self.training_job_id, str) or not self.training_job_id.strip():
            raise ModelArtsValidationError(
                f"training_job_id must be a non-empty string, got {self.training_job_id!r}"
            )
        if self.compression not in COMPRESSIONS:
            raise ModelArtsValidationError(f"compression must be None or 'gzip', got {self.compression!r}")
        if not isinstance(self.poll_interval, (int, float)) or self.poll_interval < 0:
            raise ModelArtsValidationError(f"poll_interval must be a number >= 0, got {self.poll_interval!r}")
        if self.timeout is not None and (not isinstance(self.timeout, (int, float)) or self.timeout <= 0):
            raise ModelArtsValidationError(f"timeout must be None or a number > 0, got {self.timeout!r}")
        validate_stream_args(
            stream_logs=self.stream_logs,
            stream_log_tasks=self.stream_log_tasks,
            stream_max_bytes=self.stream_max_bytes,
        )
        for name, least in (("max_workers", 1), ("max_attempts", 0), ("chunk_size", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ModelArtsValidationError(f"{name} must be an integer >= {least}, got {value!r}")
        if (
            isinstance(self.retry_wait, bool)
            or not isinstance(self.retry_wait, (int, float))
            or not 0 <= self.retry_wait <= 3600
        ):
            raise ModelArtsValidationError(
                f"retry_wait must be a number of seconds from 0 to 3600, got {self.retry_wait!r}"
            )
        for name, zero_ok in (("stall_window", False), ("stall_min_rate", True)):
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or value < 0
                or (value == 0 and not zero_ok)
            ):
                raise ModelArtsValidationError(
                    f"{name} must be a number {'>=' if zero_ok else '>'} 0, got {value!r}"
                )
        task_ids: list[str] | None
        if self.task_ids is None:
            task_ids = None
        elif isinstance(self.task_ids, str):
            task_ids = [self.task_ids]
        elif isinstance(self.task_ids, (list, tuple)) and all(
            isinstance(t, str) and t for t in self.task_ids
        ):
            task_ids = list(self.task_ids)
        else:
            raise ModelArtsValidationError(
                f"task_ids must be None or a list of task names, got {self.task_ids!r}"
            )
        layout = ArchiveLayout(path_template=self.path_template, manifest_template=self.manifest_template)
        return self._resolve_destination(), layout, task_ids

    def _resolve_destination(self) -> ObjectStoragePath:
        dest: Any = self.destination
        if isinstance(dest, ObjectStoragePath):
            return dest  # already resolved by its constructor: used as it is
        if isinstance(dest, os.PathLike):
            dest = os.fspath(dest)
        if not isinstance(dest, str) or not dest.strip():
            raise ModelArtsValidationError(f"destination must be a URI or an ObjectStoragePath, got {dest!r}")
        dest = check_destination_uri(dest.strip())
        scheme = urlsplit(dest).scheme.lower()
        from airflow.sdk.io.fs import has_fs

        if not has_fs(scheme):
            raise ModelArtsValidationError(
                f"destination scheme {scheme!r} is not supported ({dest}); use file://, s3:// (needs "
                "apache-airflow-providers-amazon[s3fs]), obs:// (needs airflow-provider-modelarts[obs]) or "
                "another scheme registered with Airflow's ObjectStoragePath"
            )
        conn_id = self.destination_conn_id
        if conn_id is None and scheme == "obs":
            conn_id = self.modelarts_conn_id
        return ObjectStoragePath(dest, conn_id=conn_id)

    # ---------------------------------------------------------------------------------------------------

    def execute(self, context: Context) -> dict[str, Any]:
        destination, layout, task_ids = self._validate()
        job = self._read_job()
        self._persist_links(context, job)
        phase = self._phase(job)
        if self.wait_for_completion and not phase.is_terminal:
            if self.deferrable:
                self._defer(phase, context)
            job = self._wait(job, phase, context)
        return self._archive(context, job, destination, layout, task_ids)

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> dict[str, Any]:
        """Resume after the trigger: archive once the job reached a terminal phase."""
        if self.stream_logs:
            save_event_stream_state(context, self.training_job_id, event)
        validate_execute_complete_event(event, training_job_id=self.training_job_id)
        destination, layout, task_ids = self._validate()
        job = self._read_job()
        # A resumed task runs in a new process: store the links' data again for this one.
        self._persist_links(context, job)
        return self._archive(context, job, destination, layout, task_ids)

    def _read_job(self) -> TrainingJob:
        body = self.hook.get_training_job(self.training_job_id)
        return TrainingJob.from_api(body, requested_id=self.training_job_id)

    def _persist_links(self, context: Context, job: TrainingJob) -> None:
        persist_training_job_links(
            context,
            training_job_id=self.training_job_id,
            console_url=self.hook.console_url(self.training_job_id),
            modelarts_conn_id=self.modelarts_conn_id,
            task_ids=job.checked_tasks(),
        )

    def _phase(self, job: TrainingJob) -> TrainingJobPhase:
        return TrainingJobPhase.parse(job.reported_phase, training_job_id=self.training_job_id)

    def _defer(self, phase: TrainingJobPhase, context: Context | None = None) -> None:
        self.log.info(
            "Training job %s is %s; deferring until it finishes (poll every %ss)",
            self.training_job_id,
            phase.value,
            self.poll_interval,
        )
        self.defer(
            trigger=ModelArtsTrainingJobTrigger(
                training_job_id=self.training_job_id,
                modelarts_conn_id=self.modelarts_conn_id,
                poll_interval=self.poll_interval,
                end_time=time.time() + self.timeout if self.timeout else None,
                success_phases=sorted(p.value for p in TERMINAL_PHASES),
                failure_phases=[],
                stream_logs=self.stream_logs,
                stream_log_tasks=self.stream_log_tasks,
                stream_max_bytes=self.stream_max_bytes,
                log_stream_state=(
                    load_stream_state(context, self.training_job_id)[0]
                    if self.stream_logs and context is not None
                    else None
                ),
            ),
            method_name="execute_complete",
            timeout=defer_timeout(self.timeout),
        )

    def _wait(self, job: TrainingJob, phase: TrainingJobPhase, context: Context | None = None) -> TrainingJob:
        deadline = time.monotonic() + self.timeout if self.timeout else None
        self.log.info("Waiting for training job %s to finish (now %s)", self.training_job_id, phase.value)
        stream = None
        if self.stream_logs and context is not None:
            stream = ContextLogStream(
                hook=self.hook,
                training_job_id=self.training_job_id,
                stream_log_tasks=self.stream_log_tasks,
                max_bytes=self.stream_max_bytes,
                emit=lambda line: self.log.info("%s", line),
            )
            stream.poll(context, job)
        while not phase.is_terminal:
            if deadline is not None and time.monotonic() >= deadline:
                raise ModelArtsWaitTimeoutError(
                    f"Timed out after {self.timeout}s waiting for training job {self.training_job_id} to "
                    f"finish; it is still {phase.value}"
                )
            pause = self.poll_interval
            if deadline is not None:
                pause = max(0.0, min(pause, deadline - time.monotonic()))
            time.sleep(pause)
            job = self._read_job()
            new_phase = self._phase(job)
            if new_phase is not phase:
                self.log.info("Training job %s: %s -> %s", self.training_job_id, phase.value, new_phase.value)
            phase = new_phase
            if stream is not None:
                stream.poll(context, job, final=phase.is_terminal)
        return job

    def _archive(
        self,
        context: Context,
        job: TrainingJob,
        destination: ObjectStoragePath,
        layout: ArchiveLayout,
        task_ids: list[str] | None,
    ) -> dict[str, Any]:
        archiver = TrainingJobLogArchiver(
            self.new_hook,
            destination,
            layout=layout,
            compression=self.compression,
            overwrite=self.overwrite,
            max_workers=self.max_workers,
            chunk_size=self.chunk_size,
            max_attempts=self.max_attempts,
            stall_window=self.stall_window,
            stall_min_rate=self.stall_min_rate,
        )
        self._archiver = archiver
        result = archiver.archive(job, task_ids, training_job_id=self.training_job_id).to_xcom()
        self._emit_asset_events(context, result)
        return result

    def on_kill(self) -> None:
        """Stop the archive: running copies stop at their next read, queued ones never start."""
        if self._archiver is not None:
            self._archiver.stop()

    def _emit_asset_events(self, context: Context, result: dict[str, Any]) -> None:
        outlets = getattr(self, "outlets", None) or []
        if not outlets:
            return
        events = context.get("outlet_events")
        if events is None:
            return
        extra = {
            "training_job_id": result["training_job_id"],
            "phase": result["phase"],
            "manifest": result["manifest"],
            "tasks": [
                {"task_id": t["task_id"], "size": t["size"], "sha256": t["sha256"]} for t in result["tasks"]
            ],
        }
        from airflow.providers.common.compat.sdk import Asset

        for outlet in outlets:
            if isinstance(outlet, Asset):
                events[outlet].extra = extra
