"""Staged multipart upload to S3-compatible stores (``s3://``, ``obs://``) overlapped with receiving.

The bytes written are gathered into parts of ``part_size``; each full part is uploaded by a small
thread pool while the caller keeps writing the next one. At most ``parts_in_flight`` parts are being
uploaded (or wait for a thread) at a time: a writer that gets ahead waits for a slot, so the memory
held per upload is at most ``(parts_in_flight + 1) * part_size`` (the parts in flight plus the one
being filled). Nothing is visible at the key until :meth:`MultipartWriter.commit`; a failed part, a
stop or a :meth:`~MultipartWriter.discard` aborts the upload once no part is still being sent.

When the caller knows the object will take more than one part (``expected_size``), the upload is
created in the background at once, so the store's client is set up while the first parts are received.

Checksums follow the store's client configuration. Where botocore computes request checksums
(``request_checksum_calculation="when_supported"``, its default for S3), the upload is declared CRC-32
when it is created and every part asks for it, and the parts' checksums the store answers go into the
completion, as boto3's transfer manager does (the store then keeps a composite CRC-32 of the parts
rather than computing a checksum of the whole object). Where botocore computes them only when required
(the ``obs://`` default, since OBS refuses these headers), none are asked for.

Only public methods of ``s3fs.S3FileSystem`` are used: ``split_path``, ``connect`` (the client, to read
its configuration), ``call_s3`` (the file system's own client, so its credentials, endpoint, retries,
signer and extra request arguments apply) and ``invalidate_cache``.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any, NamedTuple

from airflow_provider_modelarts.exceptions import ModelArtsArchiveDestinationError

__all__ = [
    "MAX_PARTS",
    "PARTS_IN_FLIGHT",
    "PART_SIZE",
    "MultipartWriter",
    "destination_error",
    "sends_checksums",
]

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


def sends_checksums(fs: Any) -> bool:
    """Whether the store's client computes request checksums (botocore's ``when_supported``)."""
    config = fs.connect().meta.config
    return getattr(config, "request_checksum_calculation", None) == "when_supported"


class MultipartWriter:
    """Writes one object through an uncommitted multipart upload, parts sent in the background.

    :param fs: an ``s3fs.S3FileSystem`` (or a subclass, such as the ``obs://`` one).
    :param path: ``bucket/key`` of the object.
    :param part_size: bytes per part (the last may be shorter); at least 5 MiB.
    :param parts_in_flight: parts uploaded at the same time, and the bound on parts held in memory.
    :param check_stop: called while waiting for a slot; raises to stop the upload.
    :param expected_size: bytes the caller expects to write, if known; above one part, the upload is
        created at once in the background. Only a hint: any number of bytes may be written.
    """

    def __init__(
        self,
        fs: Any,
        path: str,
        *,
        part_size: int = PART_SIZE,
        parts_in_flight: int = PARTS_IN_FLIGHT,
        check_stop: Callable[[], None] | None = None,
        expected_size: int | None = None,
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
        self._buf = io.BytesIO()
        self._fill = 0
        self._free: list[io.BytesIO] = []
        self._parts: dict[Future[dict[str, Any]], tuple[int, io.BytesIO]] = {}
        self._done: list[tuple[dict[str, Any], int]] = []
        self._pool: ThreadPoolExecutor | None = None
        self._upload: Future[_Upload] | None = None
        if expected_size is not None and expected_size > part_size:
            self._start()

    def _call(self, method: str, **kwargs: Any) -> dict[str, Any]:
        return self.fs.call_s3(method, Bucket=self.bucket, Key=self.key, **kwargs)

    def _start(self) -> None:
        """Create the upload on the first upload thread; parts queued meanwhile wait for it."""
        self._pool = ThreadPoolExecutor(
            max_workers=self.parts_in_flight, thread_name_prefix="modelarts-upload"
        )
        self._upload = self._pool.submit(self._create)

    def _create(self) -> _Upload:
        checksums = sends_checksums(self.fs)
        extra = {"ChecksumAlgorithm": "CRC32"} if checksums else {}
        return _Upload(self._call("create_multipart_upload", **extra)["UploadId"], checksums)

    def write(self, data: bytes | memoryview) -> None:
        """Append ``data``; full parts are handed to the upload threads (waiting for a free slot)."""
        view = memoryview(data).cast("B")
        done = 0
        while done < len(view):
            piece = view[done : done + self.part_size - self._fill]
            self._buf.write(piece)
            self._fill += len(piece)
            done += len(piece)
            if self._fill == self.part_size:
                self._send_part()
        self.written += len(view)

    def _send_part(self) -> None:
        """Hand the filled buffer to an upload thread; take a free buffer for the next part."""
        self._collect(block=len(self._parts) >= self.parts_in_flight)
        if self._upload is None:
            self._start()
        number = len(self._done) + len(self._parts) + 1
        if number > MAX_PARTS:
            raise OSError(f"more than {MAX_PARTS} parts of {self.part_size} bytes")
        assert self._pool is not None
        buf, size = self._buf, self._fill
        # Sent as a file: the HTTP client reads it in small slices instead of copying the whole part.
        buf.truncate(size)
        buf.seek(0)
        future = self._pool.submit(self._send, number, buf)
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

    def _send(self, number: int, body: io.BytesIO) -> dict[str, Any]:
        assert self._upload is not None
        upload = self._upload.result()  # raises the creation's error
        checksum = {"ChecksumAlgorithm": "CRC32"} if upload.checksums else {}
        out = self._call("upload_part", UploadId=upload.upload_id, PartNumber=number, Body=body, **checksum)
        part = {"PartNumber": number, "ETag": out["ETag"]}
        if upload.checksums and "ChecksumCRC32" in out:
            part["ChecksumCRC32"] = out["ChecksumCRC32"]
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
            self._wait_some(list(self._parts))

    def _wait_some(self, futures: list[Future[Any]]) -> None:
        if self.check_stop is not None:
            self.check_stop()
        wait(futures, timeout=_POLL, return_when=FIRST_COMPLETED)

    def seal(self) -> None:
        """Send what is left and wait for every part; check that the parts hold every byte written."""
        if self._upload is None or not self.written:
            return
        if self._fill:
            self._send_part()
        while True:
            self._collect(block=False)
            if not self._parts:
                break
            self._wait_some(list(self._parts))
        sent = sum(size for _, size in self._done)
        if sent != self.written:
            raise OSError(f"the parts hold {sent} bytes, {self.written} were written")

    def commit(self) -> None:
        """Make the object appear: complete the upload, or one ``PutObject`` for an object under one part.

        An upload started for bytes that never came (an empty object) is aborted and the object put.
        """
        upload = None if self._upload is None else self._upload.result()  # raises the creation's error
        if upload is not None and self.written:
            parts = sorted((p for p, _ in self._done), key=lambda p: p["PartNumber"])
            self._call(
                "complete_multipart_upload", UploadId=upload.upload_id, MultipartUpload={"Parts": parts}
            )
        else:
            self._call("put_object", Body=self._buf.getvalue()[: self._fill])
            if upload is not None:
                self._abort(upload.upload_id)
        self._close()
        self.fs.invalidate_cache(self.path)

    def discard(self) -> None:
        """Drop queued parts, wait for those being sent, abort the upload. Never raises."""
        for future in self._parts:
            future.cancel()
        if self._parts:
            wait(list(self._parts))
        started, self._upload = self._upload, None
        self._close()
        if started is None:
            return
        try:
            upload_id = started.result().upload_id
        except Exception:
            return  # never created: nothing to abort
        self._abort(upload_id)

    def _abort(self, upload_id: str) -> None:
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


class _Upload(NamedTuple):
    upload_id: str
    checksums: bool
