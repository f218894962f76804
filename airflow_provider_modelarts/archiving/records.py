"""Per-task records and the manifest rebuilt from them.

Next to each committed log lies a small record (``{log}.record.json``) holding that log's manifest entry;
it is written after the log is committed, by the run that copied it. ``manifest.json`` is never edited in
place: it is rebuilt from the records of every task of the job, written, and rebuilt again to check that no
record appeared meanwhile (if one did, it is written again). The first rebuild takes the records this run
has just written as written (it reads only the others); the check after each write reads every record.
So runs of the same job with any task subsets, at the same time, on any store with atomic object writes
(local disk, S3, OBS), end with a manifest that lists every task any of them archived, without a lock
server: the last run to write the manifest reads the records after its write, and every record was
written before its own run's manifest write.

A record is trusted only when it is well formed, names this job, this task and this object, and the object
still has the recorded size; anything else (an older manifest, another job's record under a shared
``{job_name}``, a truncated file) is ignored and the log is copied again.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from airflow_provider_modelarts.archiving.layout import RECORD_SUFFIX
from airflow_provider_modelarts.archiving.staging import write_bytes_atomically

if TYPE_CHECKING:
    from airflow.providers.common.compat.sdk import ObjectStoragePath

__all__ = [
    "MANIFEST_VERSION",
    "RECORD_VERSION",
    "ManifestWriter",
    "read_json",
    "read_record",
    "record_path",
    "trusted_entry",
    "utcnow_iso",
    "write_record",
]

log = logging.getLogger(__name__)

MANIFEST_VERSION = 1
RECORD_VERSION = 1
# Rebuild-write-recheck rounds before the manifest is reported as unsettled (concurrent runs that keep
# adding records; each of them rebuilds it after its own writes).
MANIFEST_ROUNDS = 5
# Threads reading the records when a manifest is rebuilt.
COLLECT_WORKERS = 16
_RECORD_LIMIT = 64 * 1024
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def utcnow_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def record_path(log_path: ObjectStoragePath) -> ObjectStoragePath:
    """Where the record of the log at ``log_path`` lies."""
    return log_path.parent / (log_path.name + RECORD_SUFFIX)


def read_json(path: ObjectStoragePath, *, limit: int = _RECORD_LIMIT) -> Any:
    """The JSON document at ``path``; ``None`` if absent, unreadable, too big or not JSON."""
    try:
        # One ranged read (a single GET on object stores, no existence check first).
        raw = path.fs.cat_file(path.path, start=0, end=limit + 1)
    except FileNotFoundError:
        return None
    except OSError as e:
        log.warning("Ignoring unreadable %s (%s)", path, type(e).__name__)
        return None
    if len(raw) > limit:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return None


def _object_size(path: ObjectStoragePath) -> int | None:
    try:
        return int(path.fs.info(path.path)["size"])
    except (OSError, KeyError, ValueError, TypeError):
        return None


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def trusted_entry(
    record: Any,
    *,
    training_job_id: str,
    task_id: str,
    target: ObjectStoragePath,
    compression: str | None,
    check_object: bool = True,
) -> dict[str, Any] | None:
    """The manifest entry of a record that proves ``target`` is an intact copy; else ``None``.

    The entry's ``complete`` tells whether the log was final (the job had ended) when it was copied.
    """
    if not isinstance(record, dict) or record.get("record_version") != RECORD_VERSION:
        return None
    entry = record.get("entry")
    if record.get("training_job_id") != training_job_id or not isinstance(entry, dict):
        return None
    stored = entry.get("stored_size")
    if (
        entry.get("task_id") != task_id
        or not isinstance(entry.get("complete"), bool)
        or "error" in entry
        or entry.get("uri") != str(target)
        or entry.get("compression") != compression
        or not _is_count(entry.get("size"))
        or not _is_count(stored)
        or not isinstance(entry.get("sha256"), str)
        or not _SHA256.match(entry["sha256"])
    ):
        return None
    if check_object and _object_size(target) != stored:
        return None
    return entry


def failure_entry(record: Any, *, training_job_id: str, task_id: str) -> dict[str, Any] | None:
    """The entry of a well-formed failure record of this job and task; else ``None``."""
    if not isinstance(record, dict) or record.get("record_version") != RECORD_VERSION:
        return None
    entry = record.get("entry")
    if record.get("training_job_id") != training_job_id or not isinstance(entry, dict):
        return None
    if entry.get("task_id") != task_id or entry.get("complete") is not False or "sha256" in entry:
        return None
    if not isinstance(entry.get("error"), str):
        return None
    return entry


def read_record(log_path: ObjectStoragePath) -> Any:
    """The record next to ``log_path`` as stored (unchecked), or ``None``."""
    return read_json(record_path(log_path))


def write_record(log_path: ObjectStoragePath, *, training_job_id: str, entry: dict[str, Any]) -> None:
    """Write the record of ``log_path`` (atomically).

    :raises ModelArtsArchiveDestinationError: the destination refused it.
    """
    body = {"record_version": RECORD_VERSION, "training_job_id": training_job_id, "entry": entry}
    write_bytes_atomically(record_path(log_path), json.dumps(body, indent=2, sort_keys=True).encode())


@dataclass
class ManifestWriter:
    """Rebuilds ``manifest.json`` of one job from the records of all its tasks.

    :param manifest_path: where the manifest goes.
    :param training_job_id: the job.
    :param job_name: its name.
    :param phase: its phase when the archive started.
    :param terminal: whether that phase is terminal (its logs final).
    :param targets: every task of the job and its log path.
    :param compression: ``None`` or ``"gzip"``.
    :param layout: what the manifest records about the layout.
    """

    manifest_path: ObjectStoragePath
    training_job_id: str
    job_name: str
    phase: str
    terminal: bool
    targets: dict[str, ObjectStoragePath]
    compression: str | None
    layout: dict[str, Any]

    def collect(self, known: Mapping[str, dict[str, Any]] | None = None) -> dict[str, dict[str, Any]]:
        """The entry of every task that has a trusted record (complete or failed).

        :param known: entries of records the caller has just written, taken as written (not read back).

        The other records are read by up to :data:`COLLECT_WORKERS` threads: on an object store each task
        costs a request or two, and a job can have hundreds of tasks.
        """
        known = known or {}
        tasks = [t for t in self.targets if t not in known]
        if len(tasks) < 2:
            found = [self._entry(t) for t in tasks]
        else:
            workers = min(COLLECT_WORKERS, len(tasks))
            with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="modelarts-manifest") as pool:
                found = list(pool.map(self._entry, tasks))
        entries = {task_id: entry for task_id, entry in zip(tasks, found, strict=True) if entry is not None}
        entries.update((t, e) for t, e in known.items() if t in self.targets)
        return entries

    def _entry(self, task_id: str) -> dict[str, Any] | None:
        target = self.targets[task_id]
        record = read_record(target)
        return trusted_entry(
            record,
            training_job_id=self.training_job_id,
            task_id=task_id,
            target=target,
            compression=self.compression,
        ) or failure_entry(record, training_job_id=self.training_job_id, task_id=task_id)

    def document(self, entries: dict[str, dict[str, Any]]) -> dict[str, Any]:
        """The manifest for ``entries``: complete only when every task of the job is archived."""
        missing = sorted(t for t in self.targets if t not in entries)
        every = (
            bool(self.targets) and not missing and all(e.get("complete") is True for e in entries.values())
        )
        return {
            "version": MANIFEST_VERSION,
            "training_job_id": self.training_job_id,
            "job_name": self.job_name,
            "phase": self.phase,
            "complete": self.terminal and every,
            "updated_at": utcnow_iso(),
            "layout": self.layout,
            "tasks": [entries[k] for k in sorted(entries)],
            "missing": missing,
        }

    def write(self, known: Mapping[str, dict[str, Any]] | None = None) -> dict[str, Any]:
        """Rebuild, write and re-check the manifest; return what was written last.

        :param known: entries of the records this run has just written; the first rebuild takes them as
            written, the check after the write reads every record (so a record another run changed
            meanwhile is caught and the manifest written again).
        :raises ModelArtsArchiveDestinationError: the destination refused the manifest.
        """
        entries = self.collect(known)
        for _ in range(MANIFEST_ROUNDS):
            document = self.document(entries)
            payload = json.dumps(document, indent=2, sort_keys=True).encode()
            write_bytes_atomically(self.manifest_path, payload)
            again = self.collect()
            if again == entries:
                return document
            entries = again
        log.warning("%s: records kept changing while the manifest was written", self.manifest_path)
        return document
