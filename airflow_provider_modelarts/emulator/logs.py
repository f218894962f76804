"""Log contents served by the emulator: literal text, a file on disk, or generated deterministic bytes.

Every source serves byte ranges as an iterator of buffers, so logs of several GiB are streamed and never
held in memory. Generated logs are built from one precomputed block of log lines per seed; each block
starts with a fixed-width header naming its index, so every byte depends on its position and the seed.
"""

from __future__ import annotations

import hashlib
import os
import random
import threading
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path

__all__ = [
    "BLOCK_SIZE",
    "CHUNK_SIZE",
    "FileLog",
    "GeneratedLog",
    "LogSource",
    "TextLog",
    "make_log_source",
    "parse_size",
]

BLOCK_SIZE = 1024 * 1024
CHUNK_SIZE = 1024 * 1024

_LEVELS = ("INFO", "INFO", "INFO", "INFO", "DEBUG", "WARNING")
_MESSAGES = (
    "step={step} loss={loss:.6f} lr={lr:.2e} throughput={tp:.1f} samples/s",
    "epoch={epoch} step={step} grad_norm={gn:.4f}",
    "saving checkpoint to /cache/ckpt/step_{step}.ckpt",
    "dataloader worker {worker} prefetched {n} batches",
    "allreduce bucket {worker} size={n}KiB time={gn:.3f}ms",
)


class LogSource:
    """A task log of a known final size whose bytes can be read by range."""

    size: int

    def iter_range(self, start: int, end: int) -> Iterator[bytes | memoryview]:
        """Yield the bytes ``[start, end)`` of the log in chunks of at most about 1 MiB.

        :param start: first byte offset (inclusive).
        :param end: last byte offset (exclusive), at most ``size``.
        """
        raise NotImplementedError

    def read(self, start: int, end: int) -> bytes:
        """Return the bytes ``[start, end)``; only for small ranges (previews, tests).

        :param start: first byte offset (inclusive).
        :param end: last byte offset (exclusive).
        """
        return b"".join(bytes(chunk) for chunk in self.iter_range(start, end))

    def __init__(self) -> None:
        self._digest_lock = threading.Lock()
        self._digests: dict[int, str] = {}

    def sha256(self, length: int | None = None) -> str:
        """Hex SHA-256 of the first ``length`` bytes (the whole log by default), computed once and cached.

        :param length: prefix length; defaults to the full size.
        """
        length = self.size if length is None else length
        with self._digest_lock:
            cached = self._digests.get(length)
            if cached is not None:
                return cached
            digest = hashlib.sha256()
            for chunk in self.iter_range(0, length):
                digest.update(chunk)
            self._digests[length] = digest.hexdigest()
            return self._digests[length]


class TextLog(LogSource):
    """A literal text log (UTF-8 encoded).

    :param text: the log text.
    """

    def __init__(self, text: str) -> None:
        super().__init__()
        self._data = text.encode("utf-8")
        self.size = len(self._data)

    def iter_range(self, start: int, end: int) -> Iterator[bytes | memoryview]:
        view = memoryview(self._data)
        for pos in range(start, end, CHUNK_SIZE):
            yield view[pos : min(end, pos + CHUNK_SIZE)]


class FileLog(LogSource):
    """A log read from a file on disk, range by range.

    :param path: the file; its size is taken when the scenario is loaded.
    """

    def __init__(self, path: str | Path) -> None:
        super().__init__()
        self.path = Path(path)
        if not self.path.is_file():
            raise ValueError(f"log file {self.path} does not exist")
        self.size = self.path.stat().st_size

    def iter_range(self, start: int, end: int) -> Iterator[bytes | memoryview]:
        with self.path.open("rb") as handle:
            handle.seek(start)
            pos = start
            while pos < end:
                chunk = handle.read(min(CHUNK_SIZE, end - pos))
                if not chunk:
                    raise OSError(f"log file {self.path} shrank while being served")
                pos += len(chunk)
                yield chunk


def _block_header(seed: int, index: int) -> bytes:
    return b"[modelarts-emulator seed=%010d block=%012d] generated log block\n" % (seed % 10**10, index)


@lru_cache(maxsize=16)
def _block_body(seed: int, body_size: int) -> bytes:
    rng = random.Random(seed)
    lines: list[bytes] = []
    total = 0
    step = 0
    while total < body_size:
        step += 1
        template = rng.choice(_MESSAGES)
        message = template.format(
            step=step,
            epoch=step // 1000,
            loss=rng.random() * 4,
            lr=rng.random() / 100,
            tp=rng.random() * 5000,
            gn=rng.random() * 10,
            worker=rng.randrange(64),
            n=rng.randrange(1, 4096),
        )
        line = (
            f"2024-01-01T00:{step // 60 % 60:02d}:{step % 60:02d}Z {rng.choice(_LEVELS)} [rank-0] {message}\n"
        )
        data = line.encode("ascii")
        lines.append(data)
        total += len(data)
    body = b"".join(lines)[:body_size]
    return body[:-1] + b"\n"


class GeneratedLog(LogSource):
    """Deterministic generated log content of any size, streamed block by block.

    :param size: total size in bytes.
    :param seed: the seed; the same ``(size, seed)`` always gives the same bytes. The last byte is ``\\n``.
    """

    def __init__(self, size: int, seed: int = 0) -> None:
        super().__init__()
        if size < 0:
            raise ValueError("generated log size must be >= 0")
        self.size = size
        self.seed = seed
        header_size = len(_block_header(seed, 0))
        self._body = memoryview(_block_body(seed, BLOCK_SIZE - header_size))
        self._header_size = header_size

    def iter_range(self, start: int, end: int) -> Iterator[bytes | memoryview]:
        end = min(end, self.size)
        pos = start
        while pos < end:
            index, within = divmod(pos, BLOCK_SIZE)
            block_end = min(end, (index + 1) * BLOCK_SIZE) - index * BLOCK_SIZE
            if within < self._header_size:
                header = _block_header(self.seed, index)
                piece: bytes | memoryview = header[within : min(block_end, self._header_size)]
                pos += len(piece)
                if pos == self.size:
                    yield bytes(piece[:-1]) + b"\n"
                else:
                    yield piece
                within = self._header_size
            if within < block_end:
                body_piece = self._body[within - self._header_size : block_end - self._header_size]
                pos += len(body_piece)
                if pos == self.size:
                    yield body_piece[:-1]
                    yield b"\n"
                else:
                    yield body_piece


def parse_size(value: int | str) -> int:
    """Parse a byte size such as ``1048576``, ``"512KiB"``, ``"1 GiB"`` or ``"10MB"``.

    :param value: an int or a string with an optional unit (B, KB, KiB, MB, MiB, GB, GiB).
    """
    if isinstance(value, bool):
        raise ValueError(f"invalid size {value!r}")
    if isinstance(value, int):
        return value
    text = str(value).strip().replace(" ", "")
    units = {
        "gib": 1024**3,
        "mib": 1024**2,
        "kib": 1024,
        "gb": 10**9,
        "mb": 10**6,
        "kb": 10**3,
        "g": 1024**3,
        "m": 1024**2,
        "k": 1024,
        "b": 1,
    }
    lowered = text.lower()
    for suffix, factor in units.items():
        if lowered.endswith(suffix):
            number = lowered[: -len(suffix)]
            try:
                return int(float(number) * factor)
            except ValueError:
                break
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"invalid size {value!r}") from None


def make_log_source(spec: object, base_dir: Path | None = None) -> LogSource:
    """Build a log source from a scenario ``log`` value.

    :param spec: None, a string (literal text), or a dict with one of ``text``, ``file``, ``generate``.
    :param base_dir: directory that relative ``file`` paths are resolved against.
    """
    if spec is None:
        return TextLog("")
    if isinstance(spec, str):
        return TextLog(spec)
    if not isinstance(spec, dict):
        raise ValueError(f"log must be a string or a mapping, not {type(spec).__name__}")
    keys = set(spec) & {"text", "file", "generate", "lines"}
    if len(keys) != 1:
        raise ValueError("log needs exactly one of 'text', 'file', 'generate' or 'lines'")
    if "lines" in spec:
        from airflow_provider_modelarts.emulator.live import make_paced_log

        return make_paced_log(spec["lines"])
    if "text" in spec:
        return TextLog(str(spec["text"]))
    if "file" in spec:
        path = Path(os.path.expanduser(str(spec["file"])))
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        return FileLog(path)
    generate = spec["generate"]
    if not isinstance(generate, dict) or "size" not in generate:
        raise ValueError("log.generate needs a 'size'")
    return GeneratedLog(parse_size(generate["size"]), int(generate.get("seed", 0)))
