"""Streaming, resumable, verified copy of ModelArts training-job task logs into any ``ObjectStoragePath``.

The engine knows nothing about Airflow operators: it takes something that can hand out log links and open
them (the :class:`~airflow_provider_modelarts.hooks.modelarts.ModelArtsHook` contract, see
:class:`LogSource`) and a destination path, so it can be tested with a fake source and a local directory.

Default layout under the destination::

    {destination}/{training_job_id}/{task_id}.log       (".log.gz" with compression="gzip")
    {destination}/{training_job_id}/manifest.json

Both templates can be overridden (:class:`ArchiveLayout`); they may use ``{training_job_id}``,
``{task_id}`` and ``{job_name}``.

Guarantees:

* constant memory: the log is read in chunks and hashed/compressed/written as it arrives;
* resume, not restart: an expired link or a dropped connection gets a fresh link from ModelArts and the
  download continues with ``Range: bytes=<offset>-``; a server that ignores Range restarts the file cleanly;
* verified: bytes received are checked against ``Content-Length``/``Content-Range`` and sha256 is recorded;
* atomic: data is staged (temporary sibling name, or an uncommitted multipart upload on S3/OBS) and only
  made visible at the final path after verification; the manifest is written last, the same way.
"""

from __future__ import annotations

import errno
import fcntl
import functools
import hashlib
import http.client
import json
import logging
import mmap
import os
import posixpath
import re
import sys
import threading
import time
import uuid
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from string import Formatter
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit, urlunsplit

import requests
import urllib3

from airflow_provider_modelarts.exceptions import (
    ModelArtsApiError,
    ModelArtsLogLinkExpiredError,
    ModelArtsLogTransferError,
    ModelArtsValidationError,
)
from airflow_provider_modelarts.states import TrainingJobPhase

if TYPE_CHECKING:
    from airflow.providers.common.compat.sdk import ObjectStoragePath

log = logging.getLogger(__name__)

CHUNK_SIZE = 4 * 1024 * 1024
LOCAL_WRITE_SLICE = 16 * 1024
# Direct I/O (``O_DIRECT``) wants buffer address, file offset and length aligned to the device's logical
# block size; 4 KiB covers the usual 512 B and 4 KiB devices.
DIRECT_IO_ALIGN = 4096
_O_DIRECT = getattr(os, "O_DIRECT", 0)
DEFAULT_MAX_ATTEMPTS = 10
DEFAULT_RETRY_WAIT = 1.0
MAX_RETRY_WAIT = 60.0
DEFAULT_PROGRESS_INTERVAL = 5.0
MANIFEST_VERSION = 1
COMPRESSIONS = (None, "gzip")

# A connection that breaks while the body is read surfaces as one of these (requests wraps most urllib3
# errors, but reads through ``raw`` and some edge cases raise urllib3's or the socket's own).
_STREAM_ERRORS: tuple[type[BaseException], ...] = (
    requests.RequestException,
    urllib3.exceptions.HTTPError,
    http.client.HTTPException,
    OSError,
)
_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$", re.IGNORECASE)


class LogSource(Protocol):
    """What the engine needs from the hook (a subset of ``ModelArtsHook``)."""

    def get_task_log_url(self, training_job_id: str, task_id: str, download: bool = False) -> str: ...

    def open_log_stream(
        self, url: str, *, offset: int = 0, timeout: float | None = None
    ) -> requests.Response: ...


def redact_url(url: str) -> str:
    """Return ``url`` without its query string and fragment (where a pre-signed link keeps its signature)."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


def _utcnow_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} GiB"  # pragma: no cover


# --------------------------------------------------------------------------------------------------------
# Staged (atomic) writes
# --------------------------------------------------------------------------------------------------------


def _is_local(fs: Any) -> bool:
    from fsspec.implementations.local import LocalFileSystem

    return isinstance(fs, LocalFileSystem)


def _is_s3(fs: Any) -> bool:
    try:
        from s3fs import S3FileSystem
    except ImportError:
        return False
    return isinstance(fs, S3FileSystem)


_STAGING_TOKEN_HEX = 12


def _staging_name(name: str) -> str:
    return f".{name}.{uuid.uuid4().hex[:_STAGING_TOKEN_HEX]}.partial"


def _remove_stale_staging(parent: str, name: str) -> None:
    """Delete staging files of ``name`` in local directory ``parent`` whose writer is gone.

    A live writer holds an exclusive ``flock`` on its staging file for as long as it writes; the kernel
    drops the lock when the writer's process dies (even on SIGKILL). So a staging file whose lock can be
    taken was left behind by an interrupted run and is removed; one that is locked is another copy in
    progress and is left alone.
    """
    prefix = f".{name}."
    pattern = re.compile(rf"\.{re.escape(name)}\.[0-9a-f]{{{_STAGING_TOKEN_HEX}}}\.partial")
    try:
        entries = os.listdir(parent)
    except OSError:
        return
    for entry in entries:
        # One listing per copy; the prefix test keeps a folder of thousands of logs cheap to scan.
        if not entry.startswith(prefix) or not pattern.fullmatch(entry):
            continue
        path = os.path.join(parent, entry)
        try:
            # Opened for writing: on NFS, flock is emulated with POSIX locks, which need it for LOCK_EX.
            fd = os.open(path, os.O_WRONLY)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if os.fstat(fd).st_ino != os.stat(path).st_ino:
                continue
            size = os.fstat(fd).st_size
            os.unlink(path)
            log.info("Removed %s (%s) left by an interrupted copy", path, _fmt_bytes(size))
        except OSError:
            continue  # locked by a live writer, or already gone
        finally:
            os.close(fd)


# Local block-device file systems on which direct writes are well-behaved and fast (statfs f_type):
# ext2/3/4, XFS, Btrfs. Elsewhere (NFS and EFS, SMB, FUSE, tmpfs, ...) a direct write can be a
# synchronous round trip to a server, or refused, so the page cache is used there.
_DIRECT_IO_FS_TYPES = frozenset({0xEF53, 0x58465342, 0x9123683E})


@functools.cache
def _libc() -> Any:
    import ctypes

    return ctypes.CDLL(None, use_errno=True)


def _fs_type(path: str) -> int | None:
    """``statfs(2)`` ``f_type`` of the file system holding ``path`` (Linux), else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        libc = _libc()
        buf = ctypes.create_string_buffer(256)  # struct statfs is 120 bytes on 64-bit Linux
        if libc.statfs(os.fsencode(path), buf) != 0:
            return None
        return ctypes.c_long.from_buffer(buf).value & 0xFFFFFFFF
    except (OSError, AttributeError, ValueError):
        return None


def _direct_io_suits(parent: str) -> bool:
    """Whether staging files in local directory ``parent`` should be written with direct I/O."""
    return bool(_O_DIRECT) and _fs_type(parent) in _DIRECT_IO_FS_TYPES


def _open_direct(path: str, flags: int) -> int:
    """``opener`` for :func:`open`: ask for direct I/O, or plain I/O where the file system refuses it."""
    try:
        return os.open(path, flags | _O_DIRECT, 0o666)
    except OSError as e:
        if e.errno != errno.EINVAL:
            raise
    return os.open(path, flags, 0o666)


def _open_locked_staging(parent: str, name: str, *, direct: bool = False) -> tuple[str, Any]:
    """Create and ``flock`` a new staging file for ``name`` in ``parent``; return its path and file."""
    while True:
        path = os.path.join(parent, _staging_name(name))
        # Unbuffered: every write goes straight to the file descriptor (one C call, GIL released).
        fh = open(path, "xb", buffering=0, opener=_open_direct if direct else None)  # noqa: SIM115
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            # A cleaner may have taken the lock between create and flock and removed the file.
            if os.fstat(fh.fileno()).st_ino == os.stat(path).st_ino:
                return path, fh
        except FileNotFoundError:
            pass
        except BaseException:
            fh.close()
            raise
        fh.close()


class StagedObject:
    """A write that becomes visible at its final path only on :meth:`commit`.

    * S3-compatible stores (``s3://``, ``obs://``): an uncommitted multipart upload (fsspec
      ``autocommit=False``); :meth:`commit` completes it, :meth:`discard` aborts it.
    * Local disk: a hidden temporary sibling ``.{name}.{token}.partial``, locked (``flock``) while it is
      written and renamed over the final name on :meth:`commit`. Staging files of the same name that no
      live writer holds (left by a killed run) are removed first. On ext4, XFS and Btrfs, block-aligned
      writes bypass the page cache (``O_DIRECT``); the first write that is not aligned (the tail, or
      the data after a short read) and everything after it goes through the page cache, as do all
      writes on other file systems (network and FUSE mounts, tmpfs).
    * Other filesystems: a hidden temporary sibling, moved over the final name on :meth:`commit` and
      deleted on :meth:`discard`.

    :param target: final location.
    """

    def __init__(self, target: ObjectStoragePath) -> None:
        self.target = target
        self._fs = target.fs
        self._final = target.path
        self._tmp: str | None = None
        self._local = False
        self._direct = False
        self._offset = 0
        self._done = False
        parent, name = posixpath.split(self._final)
        if _is_s3(self._fs):
            self._fh = self._fs.open(self._final, "wb", autocommit=False)
        elif _is_local(self._fs):
            self._local = True
            os.makedirs(parent, exist_ok=True)
            _remove_stale_staging(parent, name)
            self._tmp, self._fh = _open_locked_staging(parent, name, direct=_direct_io_suits(parent))
            self._direct = bool(_O_DIRECT and fcntl.fcntl(self._fh.fileno(), fcntl.F_GETFL) & _O_DIRECT)
        else:
            self._tmp = posixpath.join(parent, _staging_name(name))
            self._fh = self._fs.open(self._tmp, "wb")

    @property
    def is_local(self) -> bool:
        """Whether writes go to a local file (cheap to hand to a writer thread, in order)."""
        return self._local

    def write(self, data: bytes | memoryview) -> None:
        """Append ``data``."""
        if not self._local:
            self._fh.write(data)
            return
        view = memoryview(data).cast("B")
        end = len(view)
        done = self._write_direct(view) if self._direct else 0
        # Through the page cache, local files take the data in 16 KiB slices through an unbuffered file:
        # measured on Linux (1 GiB logs), that cost about half the kernel CPU time of 256 KiB-4 MiB writes.
        write = self._fh.write
        while done < end:
            done += write(view[done : done + LOCAL_WRITE_SLICE])
        self._offset += end

    def _write_direct(self, view: memoryview) -> int:
        """Write what can go around the page cache; return the bytes written (the rest is up to the caller).

        Direct I/O stops for good at the first misaligned offset or length, or when the kernel refuses
        the buffer (``EINVAL``: an unaligned address, or a file system without direct writes).
        """
        end = len(view)
        done = 0
        if self._offset % DIRECT_IO_ALIGN == 0 and end % DIRECT_IO_ALIGN == 0:
            try:
                while done < end:
                    n = self._fh.write(view[done:])
                    done += n
                    if n % DIRECT_IO_ALIGN:
                        break
            except OSError as e:
                if e.errno != errno.EINVAL:
                    raise
        if done < end:
            fd = self._fh.fileno()
            fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~_O_DIRECT)
            self._direct = False
        return done

    def commit(self) -> None:
        """Make the object visible at its final path."""
        if self._tmp is None:
            self._fh.close()
            self._fh.commit()
        elif self._local:
            self._fh.close()
            os.replace(self._tmp, self._final)
        else:
            self._fh.close()
            self._fs.mv(self._tmp, self._final)
        self._done = True

    def discard(self) -> None:
        """Throw the staged data away; nothing appears at the final path. Never raises."""
        if self._done:
            return
        self._done = True
        try:
            if self._tmp is None:
                self._fh.discard()
            elif self._local:
                self._fh.close()
                os.unlink(self._tmp)
            else:
                self._fh.close()
                self._fs.rm(self._tmp)
        except Exception:
            log.warning("Could not clean up the staged copy of %s", self.target, exc_info=True)


def write_bytes_atomically(target: ObjectStoragePath, data: bytes) -> None:
    """Write ``data`` to ``target`` through a :class:`StagedObject`."""
    staged = StagedObject(target)
    try:
        staged.write(data)
        staged.commit()
    except BaseException:
        staged.discard()
        raise


# --------------------------------------------------------------------------------------------------------
# One task log
# --------------------------------------------------------------------------------------------------------


@dataclass
class TaskArchive:
    """Outcome of archiving one task's log (one manifest entry)."""

    task_id: str
    uri: str
    size: int
    sha256: str
    phase: str
    archived_at: str
    complete: bool
    compression: str | None = None
    stored_size: int | None = None
    stored_sha256: str | None = None
    content_length: int | None = None
    attempts: int = 1
    restarts: int = 0
    seconds: float = 0.0
    skipped: bool = False

    def manifest_entry(self) -> dict[str, Any]:
        entry = asdict(self)
        entry.pop("skipped")
        return entry

    def summary(self) -> dict[str, Any]:
        return {"task_id": self.task_id, "uri": self.uri, "size": self.size, "sha256": self.sha256}


class _Pipeline:
    """Hashes the original bytes, optionally gzips them, writes and hashes what is stored.

    sha256 of the original runs on a helper thread (hashlib releases the GIL for large buffers), first-in
    first-out, so hashing chunk *n* overlaps with reading chunk *n+1* from the socket. Uncompressed data
    for a local file is written on a second helper thread, in order, so the three overlap. At most
    ``IN_FLIGHT`` chunks wait for their hash and write; the reader must not reuse a chunk's buffer before
    then.
    """

    IN_FLIGHT = 2

    def __init__(
        self,
        compression: str | None,
        hash_pool: ThreadPoolExecutor,
        write_pool: ThreadPoolExecutor | None = None,
    ) -> None:
        self.compression = compression
        self.sha256 = hashlib.sha256()
        self.size = 0
        self.stored_sha256 = hashlib.sha256()
        self.stored_size = 0
        self.staged: StagedObject | None = None
        self._hash_pool = hash_pool
        # gzip output is written by the reader as it is compressed; plain data can go to the writer thread.
        self._write_pool = write_pool if compression is None else None
        self._pending: deque[tuple[Future[None], Future[None] | None]] = deque()
        # wbits=31: gzip container; zlib writes mtime 0, so the output is reproducible.
        self._z = zlib.compressobj(6, zlib.DEFLATED, 31) if compression == "gzip" else None

    def _store(self, data: bytes | memoryview) -> None:
        assert self.staged is not None
        self.stored_size += len(data)
        if self._z is not None:
            self.stored_sha256.update(data)
        self.staged.write(data)

    def feed(self, chunk: bytes | memoryview) -> None:
        """Hash (in the background), compress and write (in the background when local) one chunk."""
        while len(self._pending) >= self.IN_FLIGHT:
            self._wait_oldest()
        self.size += len(chunk)
        hashed = self._hash_pool.submit(self.sha256.update, chunk)
        written: Future[None] | None = None
        if self._write_pool is not None and self.staged is not None and self.staged.is_local:
            self.stored_size += len(chunk)
            written = self._write_pool.submit(self.staged.write, chunk)
        self._pending.append((hashed, written))
        if written is not None:
            return
        out = self._z.compress(chunk) if self._z is not None else chunk
        if out:
            self._store(out)

    def _wait_oldest(self) -> None:
        hashed, written = self._pending.popleft()
        try:
            hashed.result()
        finally:
            if written is not None:
                written.result()

    def drain(self) -> None:
        """Wait until every fed chunk is hashed and written."""
        while self._pending:
            self._wait_oldest()

    def abandon(self) -> None:
        """Wait for queued hashing and writing to stop (the copy is being thrown away)."""
        while self._pending:
            try:
                self._wait_oldest()
            except Exception:
                log.debug("Error in abandoned archive work", exc_info=True)

    def finish(self) -> None:
        """Write the compressor's tail and wait for the last hash."""
        self.drain()
        if self._z is not None:
            tail = self._z.flush()
            if tail:
                self._store(tail)


class _Progress:
    def __init__(self, label: str, interval: float, clock: Callable[[], float]) -> None:
        self.label = label
        self.interval = interval
        self.clock = clock
        self.start = clock()
        self._next = self.start + interval

    def tick(self, done: int, total: int | None) -> None:
        now = self.clock()
        if now < self._next:
            return
        self._next = now + self.interval
        elapsed = max(now - self.start, 1e-9)
        rate = done / elapsed
        if total:
            eta = f"{(total - done) / rate:.0f}s" if rate > 0 else "?"
            log.info(
                "%s: %s of %s (%.1f%%), %.1f MB/s, ETA %s",
                self.label,
                _fmt_bytes(done),
                _fmt_bytes(total),
                100.0 * done / total,
                rate / 1e6,
                eta,
            )
        else:
            log.info("%s: %s, %.1f MB/s", self.label, _fmt_bytes(done), rate / 1e6)


def _int_header(resp: requests.Response, name: str) -> int | None:
    value = resp.headers.get(name)
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise ModelArtsLogTransferError(f"Malformed {name} header {value!r}") from None


def _body_chunks(resp: requests.Response, chunk_size: int, encoded: bool) -> Iterator[bytes | memoryview]:
    """Yield the response body in chunks of up to ``chunk_size`` bytes.

    For a plain (not content-encoded) body the bytes are read straight from the HTTP connection into a
    small ring of page-aligned buffers (so they can be written with direct I/O), skipping two copies made
    by urllib3/``iter_content``; a chunk stays valid while ``_Pipeline.IN_FLIGHT`` more chunks are read,
    which is what the pipeline allows. Anything else goes through ``iter_content``.
    """
    raw = getattr(resp, "raw", None)
    fp = getattr(raw, "_fp", None)
    if encoded or not isinstance(fp, http.client.HTTPResponse) or getattr(raw, "_decoded_buffer", None):
        yield from resp.iter_content(chunk_size)
        return
    buffers = [memoryview(mmap.mmap(-1, chunk_size)) for _ in range(_Pipeline.IN_FLIGHT + 1)]
    turn = 0
    while True:
        buf = buffers[turn]
        n = fp.readinto(buf)
        if not n:
            return
        yield buf[:n]
        turn = (turn + 1) % len(buffers)


def archive_task_log(
    source: LogSource,
    training_job_id: str,
    task_id: str,
    target: ObjectStoragePath,
    *,
    phase: str,
    complete: bool = True,
    compression: str | None = None,
    chunk_size: int = CHUNK_SIZE,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    progress_interval: float = DEFAULT_PROGRESS_INTERVAL,
    clock: Callable[[], float] = time.monotonic,
    retry_wait: float = DEFAULT_RETRY_WAIT,
) -> TaskArchive:
    """Copy one task's log to ``target``, resuming on expired links and dropped connections.

    :param source: the hook (or anything implementing :class:`LogSource`).
    :param training_job_id: ModelArts training job id.
    :param task_id: task name from ``status.tasks`` (e.g. ``worker-0``).
    :param target: final object path; nothing appears there unless the copy is complete and verified.
    :param phase: the job's phase, recorded in the result.
    :param complete: whether the job was terminal (its log final) when the copy started.
    :param compression: ``None`` or ``"gzip"``.
    :param chunk_size: bytes per read.
    :param max_attempts: how many interruptions (expired link, dropped connection, short read, restart,
        a retryable ModelArts/OBS error that outlasted the hook's own retries) are tolerated before giving up.
    :param progress_interval: seconds between progress lines.
    :param clock: monotonic clock (tests).
    :param retry_wait: seconds to wait after the first retryable ModelArts/OBS error (5xx, 429, no
        answer), doubling with each further one in a row, up to a minute; ``0`` for tests.
    :raises ModelArtsLogTransferError: the log could not be copied completely and verified.
    """
    if compression not in COMPRESSIONS:
        raise ModelArtsValidationError(f"compression must be one of {COMPRESSIONS}, got {compression!r}")
    label = f"{training_job_id}/{task_id}"
    started = clock()
    progress = _Progress(label, progress_interval, clock)
    hash_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="modelarts-sha256")
    write_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="modelarts-write")
    enc = _Pipeline(compression, hash_pool, write_pool)
    staged: StagedObject | None = None
    url: str | None = None
    offset = 0
    total: int | None = None
    content_length: int | None = None
    connections = 0
    interruptions = 0
    restarts = 0
    must_restart = False
    api_failures = 0  # retryable API errors in a row

    def api_error(what: str, e: ModelArtsApiError) -> None:
        nonlocal api_failures
        if not e.is_retryable:
            raise e
        api_failures += 1
        interrupted(f"{what}: {e}")
        wait = min(retry_wait * 2 ** (api_failures - 1), MAX_RETRY_WAIT)
        if wait > 0:
            log.info("%s: waiting %.1fs before asking again", label, wait)
            time.sleep(wait)

    def interrupted(reason: str, *, fresh_link: bool = True) -> None:
        nonlocal interruptions, url
        interruptions += 1
        where = redact_url(url) if url else "<no link>"
        if interruptions > max_attempts:
            raise ModelArtsLogTransferError(
                f"Giving up on the log of {label} after {interruptions} interruptions "
                f"({offset} bytes received); last: {reason} ({where})"
            )
        log.warning(
            "%s: %s at byte %d (%s); attempt %d of %d%s",
            label,
            reason,
            offset,
            where,
            interruptions,
            max_attempts,
            ", asking ModelArts for a fresh link" if fresh_link else "",
        )
        if fresh_link:
            url = None

    def restart(reason: str) -> None:
        nonlocal staged, enc, offset, restarts, must_restart
        restarts += 1
        log.warning("%s: %s; restarting this file from byte 0", label, reason)
        enc.abandon()
        if staged is not None:
            staged.discard()
            staged = None
        enc = _Pipeline(compression, hash_pool, write_pool)
        offset = 0
        must_restart = False

    try:
        while True:
            if must_restart and offset > 0:
                restart("the previous response was content-encoded, so it cannot be resumed by range")
            if url is None:
                try:
                    url = source.get_task_log_url(training_job_id, task_id, download=True)
                except ModelArtsApiError as e:
                    api_error("ModelArts could not issue a download link", e)
                    continue
            connections += 1
            try:
                resp = source.open_log_stream(url, offset=offset)
            except ModelArtsLogLinkExpiredError:
                interrupted("the download link expired")
                continue
            except ModelArtsApiError as e:
                if e.status_code == 416 and offset > 0 and total is None:
                    break  # the length was unknown and everything has been read already
                api_error("the log store did not answer", e)
                continue
            except _STREAM_ERRORS as e:
                interrupted(f"could not connect: {type(e).__name__}")
                continue
            api_failures = 0
            try:
                status = resp.status_code
                encoded = resp.headers.get("Content-Encoding", "identity").strip().lower() not in (
                    "",
                    "identity",
                )
                length = None if encoded else _int_header(resp, "Content-Length")
                if status == 206:
                    m = _CONTENT_RANGE.match(resp.headers.get("Content-Range", ""))
                    if not m:
                        raise ModelArtsLogTransferError(
                            f"{label}: 206 response without a valid Content-Range "
                            f"({resp.headers.get('Content-Range')!r})"
                        )
                    start, end = int(m.group(1)), int(m.group(2))
                    new_total = None if m.group(3) == "*" else int(m.group(3))
                    if start != offset:
                        interrupted(f"the server resumed at byte {start}, not {offset}", fresh_link=False)
                        restart("Content-Range does not continue where the copy stopped")
                        continue
                    if length is not None and length != end - start + 1:
                        raise ModelArtsLogTransferError(
                            f"{label}: Content-Length {length} disagrees with Content-Range "
                            f"{resp.headers.get('Content-Range')!r}"
                        )
                    if total is not None and new_total is not None and new_total != total:
                        if complete:
                            interrupted(f"the log size changed from {total} to {new_total}")
                            restart("the source object changed between requests")
                            total = None
                            continue
                        log.info(
                            "%s: the running job's log grew from %d to %d bytes", label, total, new_total
                        )
                    total = new_total
                elif status == 200:
                    if offset > 0:
                        restart(f"the server ignored the Range request (200 instead of 206 at byte {offset})")
                    total = length
                else:
                    raise ModelArtsLogTransferError(
                        f"{label}: unexpected HTTP {status} from {redact_url(url)}"
                    )
                if total is not None:
                    content_length = total
                if encoded:
                    must_restart = True
                if staged is None:
                    staged = enc.staged = StagedObject(target)
                received = 0
                chunks = _body_chunks(resp, chunk_size, encoded)
                broken: str | None = None
                while True:
                    try:
                        chunk = next(chunks)
                    except StopIteration:
                        break
                    except _STREAM_ERRORS as e:
                        broken = f"the connection dropped ({type(e).__name__})"
                        break
                    if not chunk:
                        continue
                    enc.feed(chunk)
                    received += len(chunk)
                    offset += len(chunk)
                    progress.tick(offset, total)
            finally:
                resp.close()
            if length is not None and received > length:
                raise ModelArtsLogTransferError(
                    f"{label}: received {received} bytes but Content-Length said {length}"
                )
            if broken is None and length is not None and received < length:
                broken = f"short read: {received} of {length} bytes"
            if broken is not None:
                interrupted(broken)
                continue
            if total is not None and offset != total:
                raise ModelArtsLogTransferError(
                    f"{label}: received {offset} bytes in total but the source reported {total}"
                )
            break
        if staged is None:  # only reachable through the 416 path, which needs an earlier response
            raise ModelArtsLogTransferError(f"{label}: no data received")  # pragma: no cover
        enc.finish()
        staged.commit()
    except BaseException:
        enc.abandon()
        if staged is not None:
            staged.discard()
        raise
    finally:
        hash_pool.shutdown(wait=True)
        write_pool.shutdown(wait=True)
    seconds = clock() - started
    sha = enc.sha256.hexdigest()
    result = TaskArchive(
        task_id=task_id,
        uri=str(target),
        size=enc.size,
        sha256=sha,
        phase=phase,
        archived_at=_utcnow_iso(),
        complete=complete,
        compression=compression,
        stored_size=enc.stored_size,
        stored_sha256=enc.stored_sha256.hexdigest() if compression else sha,
        content_length=content_length,
        attempts=connections,
        restarts=restarts,
        seconds=round(seconds, 3),
    )
    log.info(
        "%s: archived %s to %s in %.1fs (%.1f MB/s), sha256 %s, %d connection(s), %d restart(s)%s",
        label,
        _fmt_bytes(result.size),
        redact_url(result.uri),
        seconds,
        result.size / max(seconds, 1e-9) / 1e6,
        sha,
        connections,
        restarts,
        f", stored {_fmt_bytes(result.stored_size or 0)} gzip" if compression else "",
    )
    return result


# --------------------------------------------------------------------------------------------------------
# A whole training job
# --------------------------------------------------------------------------------------------------------

_TEMPLATE_KEYS = frozenset({"training_job_id", "task_id", "job_name"})


@dataclass(frozen=True)
class ArchiveLayout:
    """Where archived objects go, relative to the destination.

    :param path_template: object path of one task's log; ``.gz`` is appended when gzip is used.
    :param manifest_template: object path of the job's manifest.
    """

    path_template: str = "{training_job_id}/{task_id}.log"
    manifest_template: str = "{training_job_id}/manifest.json"

    def __post_init__(self) -> None:
        for name, template, needed in (
            ("path_template", self.path_template, {"task_id"}),
            ("manifest_template", self.manifest_template, set()),
        ):
            keys = {f for _, f, _, _ in Formatter().parse(template) if f is not None}
            unknown = keys - _TEMPLATE_KEYS
            if unknown:
                raise ModelArtsValidationError(
                    f"{name} {template!r} uses unknown fields {sorted(unknown)}; "
                    f"allowed: {sorted(_TEMPLATE_KEYS)}"
                )
            if not needed <= keys:
                raise ModelArtsValidationError(f"{name} {template!r} must contain {sorted(needed)}")
            if template.startswith("/") or ".." in template.split("/"):
                raise ModelArtsValidationError(f"{name} {template!r} must be a relative path without '..'")

    def task_path(
        self,
        root: ObjectStoragePath,
        *,
        training_job_id: str,
        task_id: str,
        job_name: str,
        compression: str | None,
    ) -> ObjectStoragePath:
        rel = self.path_template.format(training_job_id=training_job_id, task_id=task_id, job_name=job_name)
        if compression == "gzip":
            rel += ".gz"
        return root / rel

    def manifest_path(
        self, root: ObjectStoragePath, *, training_job_id: str, job_name: str
    ) -> ObjectStoragePath:
        return root / self.manifest_template.format(
            training_job_id=training_job_id, task_id="", job_name=job_name
        )


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
    try:
        if not path.exists():
            return None
        with path.fs.open(path.path, "rb") as fh:
            data = json.loads(fh.read())
    except (OSError, ValueError):
        log.warning("Ignoring unreadable manifest %s", path, exc_info=True)
        return None
    return data if isinstance(data, dict) else None


def _object_size(path: ObjectStoragePath) -> int | None:
    try:
        return int(path.fs.info(path.path)["size"])
    except (OSError, KeyError, ValueError, TypeError):
        return None


def job_tasks(job: dict[str, Any]) -> list[str]:
    """Task names (``status.tasks``) of a training job body."""
    tasks = (job.get("status") or {}).get("tasks") or []
    return [str(t) for t in tasks]


class TrainingJobLogArchiver:
    """Archives the logs of a training job's tasks concurrently and writes the manifest.

    :param source_factory: returns a :class:`LogSource`; called once per worker thread, since the hook's
        ``requests.Session`` is not meant to be shared between threads.
    :param destination: root of the archive.
    :param layout: object layout under ``destination``.
    :param compression: ``None`` or ``"gzip"``.
    :param overwrite: re-archive tasks that the manifest already lists as complete and intact.
    :param max_workers: how many task logs are copied at the same time.
    :param chunk_size: bytes per read.
    :param max_attempts: interruptions tolerated per task log.
    :param retry_wait: first wait (seconds) after a retryable ModelArts/OBS error; doubles while they last.
    :param progress_interval: seconds between progress lines of one log.
    """

    def __init__(
        self,
        source_factory: Callable[[], LogSource],
        destination: ObjectStoragePath,
        *,
        layout: ArchiveLayout | None = None,
        compression: str | None = None,
        overwrite: bool = False,
        max_workers: int = 4,
        chunk_size: int = CHUNK_SIZE,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        progress_interval: float = DEFAULT_PROGRESS_INTERVAL,
        retry_wait: float = DEFAULT_RETRY_WAIT,
    ) -> None:
        if compression not in COMPRESSIONS:
            raise ModelArtsValidationError(f"compression must be one of {COMPRESSIONS}, got {compression!r}")
        if max_workers < 1:
            raise ModelArtsValidationError(f"max_workers must be >= 1, got {max_workers}")
        self.source_factory = source_factory
        self.destination = destination
        self.layout = layout or ArchiveLayout()
        self.compression = compression
        self.overwrite = overwrite
        self.max_workers = max_workers
        self.chunk_size = chunk_size
        self.max_attempts = max_attempts
        self.progress_interval = progress_interval
        self.retry_wait = retry_wait
        self._local = threading.local()

    def _source(self) -> LogSource:
        src = getattr(self._local, "source", None)
        if src is None:
            src = self._local.source = self.source_factory()
        return src

    def _reusable(self, entry: dict[str, Any] | None, target: ObjectStoragePath) -> bool:
        if not entry or not entry.get("complete") or not entry.get("sha256"):
            return False
        if entry.get("uri") != str(target) or entry.get("compression") != self.compression:
            return False
        stored = entry.get("stored_size", entry.get("size"))
        return stored is not None and _object_size(target) == stored

    def archive(self, job: dict[str, Any], task_ids: Iterable[str] | None = None) -> JobArchiveResult:
        """Archive the logs of ``job`` (a training-job details body).

        :param job: the job as returned by ``ModelArtsHook.get_training_job``.
        :param task_ids: tasks to archive; ``None`` means every task in ``status.tasks``.
        :raises ModelArtsValidationError: a requested task is not one of the job's tasks.
        :raises ModelArtsLogTransferError: one or more logs could not be archived (the others are, and the
            manifest lists them).
        """
        metadata = job.get("metadata") or {}
        training_job_id = str(metadata.get("id") or "")
        if not training_job_id:
            raise ModelArtsValidationError("The training job body has no metadata.id")
        job_name = str(metadata.get("name") or training_job_id)
        phase = TrainingJobPhase.parse(
            (job.get("status") or {}).get("phase"), training_job_id=training_job_id
        )
        complete = phase.is_terminal
        available = job_tasks(job)
        if task_ids is None:
            wanted = available
        else:
            wanted = list(dict.fromkeys(str(t) for t in task_ids))
            missing = [t for t in wanted if t not in available]
            if missing:
                raise ModelArtsValidationError(
                    f"Training job {training_job_id} has no task(s) {missing}; its tasks are {available}"
                )
        manifest_path = self.layout.manifest_path(
            self.destination, training_job_id=training_job_id, job_name=job_name
        )
        previous = read_manifest(manifest_path) or {}
        entries: dict[str, dict[str, Any]] = {
            e["task_id"]: e for e in previous.get("tasks", []) if isinstance(e, dict) and "task_id" in e
        }
        if not wanted:
            log.warning("Training job %s (%s) has no tasks to archive", training_job_id, phase.value)

        def one(task_id: str) -> TaskArchive:
            target = self.layout.task_path(
                self.destination,
                training_job_id=training_job_id,
                task_id=task_id,
                job_name=job_name,
                compression=self.compression,
            )
            if not self.overwrite and self._reusable(entries.get(task_id), target):
                log.info(
                    "%s/%s: already archived and intact at %s; skipping", training_job_id, task_id, target
                )
                fields = {k: v for k, v in entries[task_id].items() if k in TaskArchive.__dataclass_fields__}
                return TaskArchive(**{**fields, "skipped": True})
            return archive_task_log(
                self._source(),
                training_job_id,
                task_id,
                target,
                phase=phase.value,
                complete=complete,
                compression=self.compression,
                chunk_size=self.chunk_size,
                max_attempts=self.max_attempts,
                progress_interval=self.progress_interval,
                retry_wait=self.retry_wait,
            )

        results: dict[str, TaskArchive] = {}
        failures: dict[str, BaseException] = {}
        workers = max(1, min(self.max_workers, len(wanted)))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="modelarts-archive") as pool:
            futures = {task_id: pool.submit(one, task_id) for task_id in wanted}
            for task_id, fut in futures.items():
                try:
                    results[task_id] = fut.result()
                except Exception as e:
                    log.error("%s/%s: archiving failed: %s", training_job_id, task_id, e)
                    failures[task_id] = e

        for task_id, res in results.items():
            entries[task_id] = res.manifest_entry()
        manifest = {
            "version": MANIFEST_VERSION,
            "training_job_id": training_job_id,
            "job_name": job_name,
            "phase": phase.value,
            "complete": complete and all(e.get("complete") for e in entries.values()),
            "updated_at": _utcnow_iso(),
            "layout": {
                "path_template": self.layout.path_template,
                "manifest_template": self.layout.manifest_template,
                "compression": self.compression,
            },
            "tasks": [entries[k] for k in sorted(entries)],
        }
        if results or not previous:
            write_bytes_atomically(manifest_path, json.dumps(manifest, indent=2, sort_keys=True).encode())
        archived = [results[t] for t in wanted if t in results]
        log.info(
            "Training job %s (%s): %d task log(s) archived, %d skipped, %d failed; manifest %s",
            training_job_id,
            phase.value,
            sum(not r.skipped for r in archived),
            sum(r.skipped for r in archived),
            len(failures),
            manifest_path,
        )
        if failures:
            detail = "; ".join(f"{t}: {e}" for t, e in failures.items())
            raise ModelArtsLogTransferError(
                f"Could not archive the log(s) of {sorted(failures)} of training job {training_job_id}: {detail}"
            ) from next(iter(failures.values()))
        return JobArchiveResult(
            training_job_id=training_job_id, phase=phase.value, manifest=str(manifest_path), tasks=archived
        )
