"""Log sources of the emulator: determinism, ranges, digests, sizes."""

from __future__ import annotations

import hashlib

import pytest

from airflow_provider_modelarts.emulator.logs import (
    BLOCK_SIZE,
    FileLog,
    GeneratedLog,
    TextLog,
    make_log_source,
    parse_size,
)


def test_generated_log_is_deterministic_and_seed_dependent():
    a = GeneratedLog(3 * BLOCK_SIZE + 123, seed=7).read(0, 3 * BLOCK_SIZE + 123)
    b = GeneratedLog(3 * BLOCK_SIZE + 123, seed=7).read(0, 3 * BLOCK_SIZE + 123)
    c = GeneratedLog(3 * BLOCK_SIZE + 123, seed=8).read(0, 3 * BLOCK_SIZE + 123)
    assert a == b
    assert a != c
    assert len(a) == 3 * BLOCK_SIZE + 123
    assert a.endswith(b"\n")


def test_generated_blocks_differ():
    log = GeneratedLog(4 * BLOCK_SIZE, seed=1)
    blocks = [log.read(i * BLOCK_SIZE, (i + 1) * BLOCK_SIZE) for i in range(4)]
    assert len(set(blocks)) == 4
    assert all(block.endswith(b"\n") for block in blocks)


@pytest.mark.parametrize("size", [0, 1, 50, BLOCK_SIZE - 1, BLOCK_SIZE, BLOCK_SIZE + 1, 2 * BLOCK_SIZE + 77])
def test_ranges_agree_with_full_read(size):
    log = GeneratedLog(size, seed=3)
    full = log.read(0, size)
    assert len(full) == size
    if size:
        assert full[-1:] == b"\n"
    for start, end in [(0, size), (size // 3, size), (size // 2, size // 2 + 70), (max(0, size - 1), size)]:
        assert log.read(start, end) == full[start:end]


def test_chunks_are_at_most_about_one_mib():
    log = GeneratedLog(5 * BLOCK_SIZE, seed=0)
    assert max(len(chunk) for chunk in log.iter_range(0, log.size)) <= BLOCK_SIZE


def test_sha256_is_cached_and_correct():
    log = GeneratedLog(BLOCK_SIZE + 10, seed=2)
    expected = hashlib.sha256(log.read(0, log.size)).hexdigest()
    assert log.sha256() == expected
    assert log._digests[log.size] == expected
    assert log.sha256(10) == hashlib.sha256(log.read(0, 10)).hexdigest()


def test_text_and_file_logs(tmp_path):
    text = TextLog("héllo\nworld\n")
    assert text.size == len("héllo\nworld\n".encode())
    assert text.read(1, 3) == "é".encode()
    path = tmp_path / "log.txt"
    path.write_bytes(b"x" * (BLOCK_SIZE * 2 + 5))
    file_log = FileLog(path)
    assert file_log.size == BLOCK_SIZE * 2 + 5
    assert file_log.read(BLOCK_SIZE * 2, file_log.size) == b"xxxxx"
    assert file_log.sha256() == hashlib.sha256(path.read_bytes()).hexdigest()


def test_make_log_source(tmp_path):
    (tmp_path / "a.log").write_text("abc")
    assert make_log_source(None).size == 0
    assert make_log_source("plain").read(0, 5) == b"plain"
    assert make_log_source({"text": "t"}).size == 1
    assert make_log_source({"file": "a.log"}, tmp_path).read(0, 3) == b"abc"
    assert make_log_source({"generate": {"size": "2KiB", "seed": 4}}).size == 2048
    with pytest.raises(ValueError, match="exactly one"):
        make_log_source({"text": "a", "file": "b"})
    with pytest.raises(ValueError, match="does not exist"):
        make_log_source({"file": "missing.log"}, tmp_path)


@pytest.mark.parametrize(
    ("value", "expected"),
    [(10, 10), ("10", 10), ("1KiB", 1024), ("1 GiB", 1024**3), ("10MB", 10**7), ("1.5k", 1536), ("3b", 3)],
)
def test_parse_size(value, expected):
    assert parse_size(value) == expected


def test_parse_size_rejects_garbage():
    with pytest.raises(ValueError):
        parse_size("lots")


def test_multi_gib_log_is_addressable_without_materialising():
    size = 5 * 1024**3 + 7
    log = GeneratedLog(size, seed=9)
    tail = log.read(size - 100, size)
    assert len(tail) == 100 and tail.endswith(b"\n")
    last_block = size // BLOCK_SIZE
    assert (
        log.read(last_block * BLOCK_SIZE, size) == b"[model\n"
    )  # 7-byte last block, final byte is a newline
    assert b"block=%012d" % (last_block - 1) in log.read(
        (last_block - 1) * BLOCK_SIZE, (last_block - 1) * BLOCK_SIZE + 80
    )
