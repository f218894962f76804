"""Staged multipart upload to S3-compatible stores (``s3://``, ``obs://``) overlapped with receiving.

The bytes written are gathered into parts of ``part_size``; each full part is uploaded by a small
thread pool while the caller keeps writing the next one. At most ``parts_in_flight`` parts are being
uploaded (or wait for a thread) at a time: a writer that gets ahead waits for a slot, so the memory
held per upload is at most ``(parts_in_flight + 1) * part_size`` (the parts in flight plus the one
being filled). Nothing is visible at the key until :meth:`MultipartWriter.commit`; a failed part, a
stop or a :meth:`~MultipartWriter.discard` aborts the upload once no part is still being sent.

Only public methods of ``s3fs.S3FileSystem`` are used: ``split_path``, ``call_s3`` (the file
system's own client, so its credentials, endpoint, retries, signer and extra request arguments
apply) and ``invalidate_cache``.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any

from airflow_provider_modelarts.exceptions import ModelArtsArchiveDestinationError

__all__ = ["MAX_PARTS", "PARTS_IN_FLIGHT", "PART_SIZE", "MultipartWriter", "destination_error"]

log = logging.getLogger(__name__)

PART_SIZE = 8 * 1024 * 1024
PARTS_IN_FLIGHT = 4
# S3 (and OBS) accept at most 10,000 parts; every part but the last must be at least 5 MiB on S3.
MAX_PARTS = 10_000
MIN_PART_SIZE = 5 * 1024 * 1024
_POLL = 0.2


def destination_error(path: str, action: str, err: BaseException) -> ModelArtsArchiveDestinationError:
    """The typed error for ``action`` on ``path`` failing with ``err`` (any exception of the store)."""
    if isinstance(err, OSError):
        return ModelArtsArchiveDestinationError.at(path, action, err)
    cause = f"{type(err).__name__}: {err}"
    return ModelArtsArchiveDestinationError(
        f"The archive destination {action} {path}: {cause}", path=path, cause=cause
    )


class MultipartWriter:
    """Writes one object through an uncommitted multipart upload, parts sent in the background.

    :param fs: an ``s3fs.S3FileSystem`` (or a subclass, such as the ``obs://`` one).
    :param path: ``bucket/key`` of the object.
    :param part_size: bytes per part (the last may be shorter); at least 5 MiB.
    :param parts_in_flight: parts uploaded at the same time, and the bound on parts held in memory.
    :param check_stop: called while waiting for a slot; raises to stop the upload.
    """

    def __init__(
        self,
        fs: Any,
        path: str,
        *,
        part_size: int = PART_SIZE,
        parts_in_flight: int = PARTS_IN_FLIGHT,
        check_stop: Callable[[], None] | None = None,
    ) -> None:
        if part_size < MIN_PART_SIZE or parts_in_flight < 1:
            raise ValueError("part_size must be >= 5 MiB and parts_in_flight >= 1")
        self.fs = fs
        self.path = path
        self.bucket, self.key, _ = fs.split_path(path)
        self.part_size = part_size
        self.parts_in_flight = parts_in_flight
        self.check_stop = check_stop
        self.written = 0
        self.upload_id: str | None = None
        self._buf = io.BytesIO()
        self._fill = 0
        self._free: list[io.BytesIO] = []
        self._parts: dict[Future[dict[str, Any]], tuple[int, io.BytesIO]] = {}
        self._done: list[tuple[dict[str, Any], int]] = []
        self._pool: ThreadPoolExecutor | None = None

    def _call(self, method: str, **kwargs: Any) -> dict[str, Any]:
        return self.fs.call_s3(method, Bucket=self.bucket, Key=self.key, **kwargs)

    def write(self, data: bytes | memoryview) -> None:
        """Append ``data``; full parts are handed to the upload threads (waiting for a free slot)."""
        view = memoryview(data).cast("B")
        done = 0
        while done < len(view):
            n = min(len(view) - done, self.part_size - self._fill)
            self._buf.write(view[done : done + n])
            self._fill += n
            done += n
            if self._fill == self.part_size:
                self._send_part()
        self.written += len(view)

    def _send_part(self) -> None:
        """Hand the filled buffer to an upload thread; take a free buffer for the next part."""
        self._collect(block=len(self._parts) >= self.parts_in_flight)
        if self.upload_id is None:
            self.upload_id = self._call("create_multipart_upload")["UploadId"]
            self._pool = ThreadPoolExecutor(
                max_workers=self.parts_in_flight, thread_name_prefix="modelarts-upload"
            )
        number = len(self._done) + len(self._parts) + 1
        if number > MAX_PARTS:
            raise OSError(f"more than {MAX_PARTS} parts of {self.part_size} bytes")
        assert self._pool is not None
        buf, size = self._buf, self._fill
        # Sent as a file: the HTTP client reads it in small slices instead of copying the whole part.
        buf.truncate(size)
        buf.seek(0)
        future = self._pool.submit(self._upload, number, buf)
        self._parts[future] = (size, buf)
        self._buf = self._take_buffer()
        self._fill = 0

    def _take_buffer(self) -> io.BytesIO:
        """A part buffer to fill from the start: a returned one (its memory reused) or a new one."""
        if not self._free:
            return io.BytesIO()
        buf = self._free.pop()
        buf.seek(0)
        return buf

    def _upload(self, number: int, body: io.BytesIO) -> dict[str, Any]:
        out = self._call("upload_part", UploadId=self.upload_id, PartNumber=number, Body=body)
        part = {"PartNumber": number, "ETag": out["ETag"]}
        for name in ("ChecksumCRC32", "ChecksumCRC32C", "ChecksumSHA1", "ChecksumSHA256"):
            if name in out:
                part[name] = out[name]
        return part

    def _collect(self, *, block: bool) -> None:
        """Take finished parts off the in-flight set; with ``block``, wait until one slot is free.

        :raises: the first failed part's error; ``check_stop``'s error while waiting.
        """
        while True:
            finished = [f for f in self._parts if f.done()]
            for future in finished:
                size, buf = self._parts.pop(future)
                self._done.append((future.result(), size))  # raises the part's error
                self._free.append(buf)
            if not block or len(self._parts) < self.parts_in_flight:
                return
            self._wait_some()

    def _wait_some(self) -> None:
        if self.check_stop is not None:
            self.check_stop()
        wait(list(self._parts), timeout=_POLL, return_when=FIRST_COMPLETED)

    def seal(self) -> None:
        """Send what is left and wait for every part; check that the parts hold every byte written."""
        if self.upload_id is not None:
            if self._fill:
                self._send_part()
            while True:
                self._collect(block=False)
                if not self._parts:
                    break
                self._wait_some()
            sent = sum(size for _, size in self._done)
            if sent != self.written:
                raise OSError(f"the parts hold {sent} bytes, {self.written} were written")

    def commit(self) -> None:
        """Make the object appear: complete the upload (one ``PutObject`` for an object under one part)."""
        if self.upload_id is None:
            self.fs.call_s3(
                "put_object", Bucket=self.bucket, Key=self.key, Body=self._buf.getvalue()[: self._fill]
            )
        else:
            parts = sorted((p for p, _ in self._done), key=lambda p: p["PartNumber"])
            self._call("complete_multipart_upload", UploadId=self.upload_id, MultipartUpload={"Parts": parts})
        self._close()
        self.fs.invalidate_cache(self.path)

    def discard(self) -> None:
        """Drop queued parts, wait for those being sent, abort the upload. Never raises."""
        for future in self._parts:
            future.cancel()
        if self._parts:
            wait(list(self._parts))
        upload_id, self.upload_id = self.upload_id, None
        self._close()
        if upload_id is not None:
            try:
                self._call("abort_multipart_upload", UploadId=upload_id)
            except Exception:
                log.warning("Could not abort the multipart upload of %s", self.path, exc_info=True)

    def _close(self) -> None:
        self._parts.clear()
        self._free.clear()
        self._buf = io.BytesIO()
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
