"""Streaming, resumable, verified copy of ModelArts training-job task logs into any ``ObjectStoragePath``.

The engine knows nothing about Airflow operators: it takes something that can hand out log links and open
them (the :class:`~airflow_provider_modelarts.hooks.modelarts.ModelArtsHook` contract, see
:class:`LogLinkSource`) and a destination path, so it can be tested with a fake source and a local directory.

Default layout under the destination::

    {destination}/{training_job_id}/{task_id}.log               (".log.gz" with compression="gzip")
    {destination}/{training_job_id}/{task_id}.log.record.json   (that log's manifest entry)
    {destination}/{training_job_id}/manifest.json

The roles live in :mod:`airflow_provider_modelarts.archiving`: ``layout`` (paths and the checks of values
from the API), ``checks`` (what an answer of the link server means), ``log_copy`` (the copy of one log),
``staging`` (atomic writes), ``records`` (per-task records and the manifest). This module runs them for a
whole job.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from airflow_provider_modelarts.archiving.layout import ArchiveLayout, job_identity, plan_paths
from airflow_provider_modelarts.archiving.log_copy import (
    CHUNK_SIZE,
    COMPRESSIONS,
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_PROGRESS_INTERVAL,
    DEFAULT_STALL_MIN_RATE,
    DEFAULT_STALL_WINDOW,
    CopySettings,
    LogCopy,
    LogLinkSource,
    StopSignal,
    TaskArchive,
    archive_task_log,
    redact_url,
)
from airflow_provider_modelarts.archiving.records import (
    ManifestWriter,
    read_json,
    read_record,
    trusted_entry,
    utcnow_iso,
    write_record,
)
from airflow_provider_modelarts.archiving.staging import StagedObject, write_bytes_atomically
from airflow_provider_modelarts.exceptions import (
    ModelArtsArchiveDestinationError,
    ModelArtsArchiveStoppedError,
    ModelArtsLogTransferError,
    ModelArtsValidationError,
)
from airflow_provider_modelarts.states import TrainingJobPhase
from airflow_provider_modelarts.training_job import TrainingJob

if TYPE_CHECKING:
    from airflow.providers.common.compat.sdk import ObjectStoragePath

__all__ = [
    "CHUNK_SIZE",
    "COMPRESSIONS",
    "DEFAULT_MAX_ATTEMPTS",
    "DEFAULT_PROGRESS_INTERVAL",
    "DEFAULT_RETRY_WAIT",
    "DEFAULT_STALL_MIN_RATE",
    "DEFAULT_STALL_WINDOW",
    "STOP_GRACE",
    "ArchiveLayout",
    "JobArchiveResult",
    "LogLinkSource",
    "StagedObject",
    "StopSignal",
    "TaskArchive",
    "TrainingJobLogArchiver",
    "archive_task_log",
    "read_manifest",
    "redact_url",
    "write_bytes_atomically",
]

log = logging.getLogger(__name__)

# Kept for compatibility: the archive no longer waits between retries (the hook does).
DEFAULT_RETRY_WAIT = 1.0
# Seconds the archive waits, once stopped, for running copies to notice (next socket read) and clean up.
STOP_GRACE = 5.0


@dataclass
class JobArchiveResult:
    """What the operator returns (XCom) plus the full manifest entries."""

    training_job_id: str
    phase: str
    manifest: str
    tasks: list[TaskArchive] = field(default_factory=list)

    def to_xcom(self) -> dict[str, Any]:
        return {
            "training_job_id": self.training_job_id,
            "phase": self.phase,
            "manifest": self.manifest,
            "tasks": [t.summary() for t in self.tasks],
        }


def read_manifest(path: ObjectStoragePath) -> dict[str, Any] | None:
    """Return the manifest at ``path``, or ``None`` if there is none (or it cannot be parsed)."""
    data = read_json(path, limit=64 * 1024 * 1024)
    return data if isinstance(data, dict) else None


class TrainingJobLogArchiver:
    """Archives the logs of a training job's tasks concurrently and writes the manifest.

    :param source_factory: returns a :class:`LogLinkSource`; called once per worker thread, since the hook's
        ``requests.Session`` is not meant to be shared between threads.
    :param destination: root of the archive.
    :param layout: object layout under ``destination``.
    :param compression: ``None`` or ``"gzip"``.
    :param overwrite: re-archive tasks whose record shows an intact archive.
    :param max_workers: how many task logs are copied at the same time.
    :param chunk_size: bytes per read.
    :param max_attempts: interruptions (expired link, dropped connection, short body, stall, restart)
        tolerated per task log.
    :param progress_interval: seconds between progress lines of one log.
    :param stall_window: seconds over which a link's rate is measured.
    :param stall_min_rate: bytes per second below which a window counts as a stall (``0`` disables).
    :param retry_wait: ignored; kept for compatibility (the hook owns transport retries).
    """

    def __init__(
        self,
        source_factory: Callable[[], LogLinkSource],
        destination: ObjectStoragePath,
        *,
        layout: ArchiveLayout | None = None,
        compression: str | None = None,
        overwrite: bool = False,
        max_workers: int = 4,
        chunk_size: int = CHUNK_SIZE,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        progress_interval: float = DEFAULT_PROGRESS_INTERVAL,
        stall_window: float = DEFAULT_STALL_WINDOW,
        stall_min_rate: float = DEFAULT_STALL_MIN_RATE,
        retry_wait: float = DEFAULT_RETRY_WAIT,
    ) -> None:
        if max_workers < 1:
            raise ModelArtsValidationError(f"max_workers must be >= 1, got {max_workers}")
        self.source_factory = source_factory
        self.destination = destination
        self.layout = layout or ArchiveLayout()
        self.settings = CopySettings(
            compression=compression,
            chunk_size=chunk_size,
            max_attempts=max_attempts,
            progress_interval=progress_interval,
            stall_window=stall_window,
            stall_min_rate=stall_min_rate,
        )
        self.compression = compression
        self.overwrite = overwrite
        self.max_workers = max_workers
        self.stop_signal = StopSignal()
        self._local = threading.local()

    def stop(self) -> None:
        """Stop the archive: running copies stop at their next read, queued ones never start."""
        self.stop_signal.stop()

    def _source(self) -> LogLinkSource:
        src = getattr(self._local, "source", None)
        if src is None:
            src = self._local.source = self.source_factory()
        return src

    def _wanted(
        self, training_job_id: str, available: list[str], task_ids: Iterable[str] | None
    ) -> list[str]:
        if task_ids is None:
            return available
        wanted = list(dict.fromkeys(str(t) for t in task_ids))
        missing = [t for t in wanted if t not in available]
        if missing:
            raise ModelArtsValidationError(
                f"Training job {training_job_id} has no task(s) {missing}; its tasks are {available}"
            )
        return wanted

    def archive(
        self,
        job: TrainingJob | dict[str, Any],
        task_ids: Iterable[str] | None = None,
        *,
        training_job_id: str | None = None,
    ) -> JobArchiveResult:
        """Archive the logs of ``job`` (a training-job details body).

        Every value of the body that reaches a path is checked before anything is written.

        :param job: the job as returned by ``ModelArtsHook.get_training_job``.
        :param task_ids: tasks to archive; ``None`` means every task in ``status.tasks``.
        :param training_job_id: the id that was asked for; the body must describe that job.
        :raises ModelArtsUnexpectedJobError: the body describes another job.
        :raises ModelArtsValidationError: a requested task is not one of the job's tasks, or a value of
            the body cannot be a path inside the destination.
        :raises ModelArtsLogTransferError: one or more logs could not be archived (the manifest lists them
            with ``complete: false`` and their error).
        :raises ModelArtsArchiveDestinationError: the manifest could not be written (the error names the
            logs that were committed; a re-run finishes the job).
        """
        view = TrainingJob.from_api(job, requested_id=training_job_id)
        identity = job_identity(view, requested=training_job_id, layout=self.layout)
        job_id = identity.training_job_id
        phase = TrainingJobPhase.parse(view.reported_phase, training_job_id=job_id)
        available = view.checked_tasks()
        wanted = self._wanted(job_id, available, task_ids)
        rel_paths, manifest_rel = plan_paths(self.layout, identity, available, compression=self.compression)
        targets = {t: self.destination / rel for t, rel in rel_paths.items()}
        manifest_path = self.destination / manifest_rel
        if not wanted:
            log.warning("Training job %s (%s) has no tasks to archive", job_id, phase.value)
        results, failures = self._run_all(job_id, phase, wanted, targets)
        writer = ManifestWriter(
            manifest_path=manifest_path,
            training_job_id=job_id,
            job_name=identity.job_name,
            phase=phase.value,
            terminal=phase.is_terminal,
            targets=targets,
            compression=self.compression,
            layout={
                "path_template": self.layout.path_template,
                "manifest_template": self.layout.manifest_template,
                "compression": self.compression,
            },
        )
        self._write_manifest(writer, results, failures)
        archived = [results[t] for t in wanted if t in results]
        log.info(
            "Training job %s (%s): %d task log(s) archived, %d skipped, %d failed; manifest %s",
            job_id,
            phase.value,
            sum(not r.skipped for r in archived),
            sum(r.skipped for r in archived),
            len(failures),
            manifest_path,
        )
        if failures:
            detail = "; ".join(f"{t}: {e}" for t, e in failures.items())
            raise ModelArtsLogTransferError(
                f"Could not archive the log(s) of {sorted(failures)} of training job {job_id}: {detail}"
            )
        return JobArchiveResult(
            training_job_id=job_id, phase=phase.value, manifest=str(manifest_path), tasks=archived
        )

    def _write_manifest(
        self, writer: ManifestWriter, results: dict[str, TaskArchive], failures: dict[str, Exception]
    ) -> None:
        failed: ModelArtsArchiveDestinationError | None = None
        # The records this run wrote are taken as written; the others are read.
        known = {t: r.manifest_entry() for t, r in results.items() if not r.skipped}
        try:
            writer.write(known)
        except ModelArtsArchiveDestinationError as e:
            failed = e
        if failed is not None:
            committed = sorted(t for t, r in results.items() if not r.skipped)
            failed_logs = "".join(f"; {t} failed: {e}" for t, e in failures.items())
            raise ModelArtsArchiveDestinationError(
                f"Could not write the manifest {writer.manifest_path} ({failed.cause}); the logs of "
                f"{committed} were committed with their records, and a re-run writes the manifest"
                f"{failed_logs}",
                path=str(writer.manifest_path),
                cause=failed.cause,
                committed=committed,
            )

    def _run_all(
        self, job_id: str, phase: TrainingJobPhase, wanted: list[str], targets: dict[str, ObjectStoragePath]
    ) -> tuple[dict[str, TaskArchive], dict[str, Exception]]:
        """Copy every wanted log; on any interruption of the caller (timeout, kill) stop them all."""
        results: dict[str, TaskArchive] = {}
        failures: dict[str, Exception] = {}
        workers = max(1, min(self.max_workers, len(wanted)))
        pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=workers, thread_name_prefix="modelarts-archive"
        )
        futures: dict[str, concurrent.futures.Future[TaskArchive]] = {}
        try:
            for task_id in wanted:
                futures[task_id] = pool.submit(self._one, job_id, phase, task_id, targets[task_id])
            for task_id, fut in futures.items():
                try:
                    results[task_id] = fut.result()
                except ModelArtsArchiveStoppedError:
                    raise
                except Exception as e:
                    log.error("%s/%s: archiving failed: %s", job_id, task_id, e)
                    failures[task_id] = e
        except BaseException:
            self.stop()
            pool.shutdown(wait=False, cancel_futures=True)
            concurrent.futures.wait(futures.values(), timeout=STOP_GRACE)
            raise
        pool.shutdown(wait=True)
        return results, failures

    def _one(
        self, job_id: str, phase: TrainingJobPhase, task_id: str, target: ObjectStoragePath
    ) -> TaskArchive:
        self.stop_signal.check(f"{job_id}/{task_id}")
        # The record decides a skip; when overwriting, it matters only if the copy fails (read then).
        entry = None if self.overwrite else self._existing(job_id, task_id, target)
        if entry is not None and entry["complete"]:
            log.info("%s/%s: already archived and intact at %s; skipping", job_id, task_id, target)
            return TaskArchive.from_entry(entry, skipped=True)

        def commit_record(result: TaskArchive) -> None:
            write_record(target, training_job_id=job_id, entry=result.manifest_entry())

        copy = LogCopy(
            self._source(),
            job_id,
            task_id,
            target,
            phase=phase.value,
            complete=phase.is_terminal,
            settings=self.settings,
            stop=self.stop_signal,
            on_commit=commit_record,
        )
        try:
            return copy.run()
        except ModelArtsArchiveStoppedError:
            raise
        except Exception as e:
            if self.overwrite:
                entry = self._existing(job_id, task_id, target)
            if entry is None or not entry["complete"]:  # a good archive's record is never replaced
                self._record_failure(job_id, phase, task_id, target, e)
            raise

    def _existing(self, job_id: str, task_id: str, target: ObjectStoragePath) -> dict[str, Any] | None:
        """The trusted entry of the record beside ``target``, or ``None``."""
        record = read_record(target)
        return trusted_entry(
            record, training_job_id=job_id, task_id=task_id, target=target, compression=self.compression
        )

    @staticmethod
    def _record_failure(
        job_id: str, phase: TrainingJobPhase, task_id: str, target: ObjectStoragePath, err: Exception
    ) -> None:
        entry = {
            "task_id": task_id,
            "uri": str(target),
            "complete": False,
            "phase": phase.value,
            "error": f"{type(err).__name__}: {err}",
            "failed_at": utcnow_iso(),
        }
        try:
            write_record(target, training_job_id=job_id, entry=entry)
        except ModelArtsArchiveDestinationError as e:
            log.warning("%s/%s: could not record the failure: %s", job_id, task_id, e)
