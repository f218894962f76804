"""The data path of one log copy: reading a body in page-aligned chunks, hashing, compressing, writing.

Only public APIs of urllib3 (``HTTPResponse.read1``) and hashlib/zlib are used.
"""

from __future__ import annotations

import hashlib
import logging
import mmap
import zlib
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING

from airflow_provider_modelarts.archiving.checks import BodyPlan, ResponseRejected

if TYPE_CHECKING:
    import requests

    from airflow_provider_modelarts.archiving.staging import StagedObject

__all__ = ["BodyReader", "Pipeline"]

log = logging.getLogger(__name__)


class Pipeline:
    """Hashes the original bytes, optionally gzips them, writes and hashes what is stored.

    sha256 of the original runs on a helper thread (hashlib releases the GIL for large buffers), first-in
    first-out, so hashing chunk *n* overlaps with reading chunk *n+1*. Uncompressed data for a local file
    is written on a second helper thread, in order. At most ``IN_FLIGHT`` chunks wait for their hash and
    write; the reader must not reuse a chunk's buffer before then.
    """

    IN_FLIGHT = 2

    def __init__(
        self,
        compression: str | None,
        staged: StagedObject,
        hash_pool: ThreadPoolExecutor,
        write_pool: ThreadPoolExecutor,
    ) -> None:
        self.sha256 = hashlib.sha256()
        self.size = 0
        self.stored_sha256 = hashlib.sha256()
        self.stored_size = 0
        self.staged = staged
        self._hash_pool = hash_pool
        self._write_pool = write_pool if compression is None and staged.is_local else None
        self._pending: deque[tuple[Future[None], Future[None] | None]] = deque()
        # wbits=31: gzip container; zlib writes mtime 0, so the output is reproducible.
        self._z = zlib.compressobj(6, zlib.DEFLATED, 31) if compression == "gzip" else None

    def _store(self, data: bytes | memoryview) -> None:
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
        if self._write_pool is not None:
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

    def abandon(self) -> None:
        """Wait for queued hashing and writing to stop, then discard the staged data."""
        while self._pending:
            try:
                self._wait_oldest()
            except Exception:
                log.debug("Error in abandoned archive work", exc_info=True)
        self.staged.discard()

    def finish(self) -> None:
        """Wait for the last hash and write, then write the compressor's tail."""
        while self._pending:
            self._wait_oldest()
        if self._z is not None:
            tail = self._z.flush()
            if tail:
                self._store(tail)


class BodyReader:
    """Reads a body one socket read at a time (``urllib3`` ``read1``), in chunks of up to ``chunk_size``.

    A plain body is gathered into a ring of page-aligned buffers (so it can be written with direct I/O);
    a chunk stays valid while ``Pipeline.IN_FLIGHT`` more are read. A content-encoded body is read as
    sent and decoded here, so its end can be checked (``eof``: the gzip trailer's CRC-32 and length).
    ``on_read`` runs after every socket read (stop and stall checks).
    """

    def __init__(
        self, resp: requests.Response, *, plan: BodyPlan, chunk_size: int, on_read: Callable[[int], None]
    ) -> None:
        self.raw = resp.raw
        self.chunk_size = chunk_size
        self.on_read = on_read
        self.wire = 0
        self.ended = False
        self._decoder = zlib.decompressobj(47) if plan.encoding is not None else None

    def _read1(self, amt: int) -> bytes:
        data = self.raw.read1(amt, decode_content=False)
        self.wire += len(data)
        self.on_read(len(data))
        return data

    def chunks(self) -> Iterator[bytes | memoryview]:
        if self._decoder is not None:
            yield from self._decoded()
            return
        ring = [memoryview(mmap.mmap(-1, self.chunk_size)) for _ in range(Pipeline.IN_FLIGHT + 1)]
        turn = 0
        while True:
            buf, filled, eof = ring[turn], 0, False
            while filled < self.chunk_size:
                try:
                    data = self._read1(self.chunk_size - filled)
                except Exception:
                    if filled:  # keep what arrived: the resume starts after it
                        yield buf[:filled]
                    raise
                if not data:
                    eof = True
                    break
                buf[filled : filled + len(data)] = data
                filled += len(data)
            if filled:
                yield buf[:filled]
                turn = (turn + 1) % len(ring)
            if eof:
                return

    def _decoded(self) -> Iterator[bytes]:
        decoder = self._decoder
        assert decoder is not None
        while True:
            data = self._read1(self.chunk_size)
            if not data:
                return
            while data:
                if decoder.eof:  # another gzip member follows
                    decoder = zlib.decompressobj(47)
                    self.ended = False
                try:
                    out = decoder.decompress(data)
                except zlib.error:
                    raise ResponseRejected("the compressed body is corrupt", restart=True) from None
                self.ended = decoder.eof
                data = decoder.unused_data
                if out:
                    yield out
