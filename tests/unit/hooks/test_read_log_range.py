"""``read_log_range`` of both hooks when the server ignores ``Range`` or answers an invalid range like OBS.

OBS answers an invalid range (a start at or past the end of the object, which a streaming cursor at the
end of the log asks for on every poll) with 200 and the whole object rather than 416. The hooks must then
not read the body at all when its ``Content-Length`` shows it ends by ``start``, and otherwise read at
most ``start + length`` bytes of it.
"""

from __future__ import annotations

import asyncio
import io
import json
from typing import Any

import httpx
import pytest
import tenacity

from airflow_provider_modelarts.exceptions import (
    ModelArtsApiError,
    ModelArtsLogLinkExpiredError,
    ModelArtsTransportError,
)
from airflow_provider_modelarts.hooks.answers import range_total, whole_object_ends_by
from airflow_provider_modelarts.hooks.common import ERROR_BODY_LIMIT
from airflow_provider_modelarts.hooks.modelarts import ModelArtsAsyncHook, ModelArtsHook
from airflow_provider_modelarts.log_stream import LogStreamer, LogStreamState

PID = "0123456789abcdef0123456789abcdef"
OBJECT = "https://bucket.obs.cn-north-4.myhuaweicloud.com/logs/job-1-worker-0.log"
LINK = OBJECT + "?AccessKeyId=AK&Expires=9999999999&Signature=SIG"
SIZE = 32 * 1024 * 1024
CHUNK = 64 * 1024


def _content(start: int, end: int) -> bytes:
    """Bytes ``[start, end)`` of the emulated object: every byte depends on its position."""
    return bytes((i * 7 + i // 251) % 256 for i in range(start, end))


@pytest.fixture
def conn(monkeypatch):
    conn = {"conn_type": "modelarts", "login": "AK", "password": "SK", "extra": {"project_id": PID}}
    conn["extra"]["endpoint"] = "http://127.0.0.1:9"
    monkeypatch.setenv("AIRFLOW_CONN_MODELARTS_DEFAULT", json.dumps(conn))


# --------------------------------------------------------------------------------------------------
# Sync hook (requests-mock; the body is a file-like object that counts what is read of it)
# --------------------------------------------------------------------------------------------------


class CountingBody(io.RawIOBase):
    """A large body produced on demand; ``read_bytes`` counts what the client consumed."""

    def __init__(self, size: int = SIZE, *, explode: bool = False) -> None:
        self.size = size
        self.position = 0
        self.read_bytes = 0
        self.explode = explode
        self.closed_by_client = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self.explode:
            raise AssertionError("the body was read")
        n = min(len(buffer), self.size - self.position, CHUNK)
        buffer[:n] = _content(self.position, self.position + n)
        self.position += n
        self.read_bytes += n
        return n

    def close(self) -> None:
        self.closed_by_client = True
        super().close()


def _sync_hook() -> ModelArtsHook:
    return ModelArtsHook(retry_wait=tenacity.wait_none(), max_retries=2)


def test_sync_whole_object_ending_by_start_is_not_read(conn, requests_mock):
    body = CountingBody(explode=True)
    requests_mock.get(OBJECT, status_code=200, headers={"Content-Length": str(SIZE)}, body=body)
    for start in (SIZE, SIZE + 10):
        assert _sync_hook().read_log_range(LINK, start=start, length=65536) == {
            "data": b"",
            "start": start,
            "total": SIZE,
        }
    assert requests_mock.last_request.headers["Range"] == f"bytes={SIZE + 10}-{SIZE + 10 + 65535}"
    assert body.read_bytes == 0 and body.closed_by_client


def test_sync_whole_object_reads_at_most_start_plus_length(conn, requests_mock):
    body = CountingBody()
    requests_mock.get(OBJECT, status_code=200, headers={"Content-Length": str(SIZE)}, body=body)
    part = _sync_hook().read_log_range(LINK, start=100_000, length=1000)
    assert part == {"data": _content(0, 101_000), "start": 0, "total": SIZE}
    assert body.read_bytes <= 101_000 + CHUNK and body.closed_by_client


def test_sync_encoded_whole_object_is_read_even_if_its_length_is_short(conn, requests_mock):
    # A compressed body's Content-Length is not the log's size: it cannot tell where the log ends.
    import gzip

    data = _content(0, 5000)
    requests_mock.get(
        OBJECT,
        status_code=200,
        headers={"Content-Encoding": "gzip"},
        content=gzip.compress(data),
    )
    part = _sync_hook().read_log_range(LINK, start=4000, length=500)
    assert part["data"] == data[:4500] and part["start"] == 0


def test_sync_206_and_416_unchanged(conn, requests_mock):
    requests_mock.get(
        OBJECT,
        [
            {"status_code": 206, "headers": {"Content-Range": "bytes 10-14/99"}, "content": b"abcde"},
            {"status_code": 416, "headers": {"Content-Range": "bytes */99"}, "content": b""},
        ],
    )
    hook = _sync_hook()
    assert hook.read_log_range(LINK, start=10, length=5) == {"data": b"abcde", "start": 10, "total": 99}
    assert hook.read_log_range(LINK, start=99, length=5) == {"data": b"", "start": 99, "total": None}


# --------------------------------------------------------------------------------------------------
# Async hook (httpx.MockTransport, as the other async hook tests; the body is a counting stream)
# --------------------------------------------------------------------------------------------------


class CountingStream(httpx.AsyncByteStream):
    """A large body yielded on demand in 64 KiB chunks; counts what was pulled and whether it was closed."""

    def __init__(
        self,
        size: int = SIZE,
        *,
        explode: bool = False,
        hang_after: int | None = None,
        content: bytes | None = None,
    ) -> None:
        self.size = size if content is None else len(content)
        self.content = content
        self.pulled = 0
        self.explode = explode
        self.hang_after = hang_after
        self.closed = False

    async def __aiter__(self):  # type: ignore[no-untyped-def]
        if self.explode:
            raise AssertionError("the body was read")
        for offset in range(0, self.size, CHUNK):
            if self.hang_after is not None and offset >= self.hang_after:
                await asyncio.Event().wait()  # the server stalls
            end = min(self.size, offset + CHUNK)
            piece = self.content[offset:end] if self.content is not None else _content(offset, end)
            self.pulled += len(piece)
            yield piece

    async def aclose(self) -> None:
        self.closed = True


def _async_hook(handler, retries: int = 2) -> ModelArtsAsyncHook:
    return ModelArtsAsyncHook(
        retry_wait=tenacity.wait_none(), max_retries=retries, transport=httpx.MockTransport(handler)
    )


async def _read(hook: ModelArtsAsyncHook, **kwargs: int) -> dict[str, Any]:
    try:
        return await hook.read_log_range(LINK, **kwargs)
    finally:
        await hook.close()


def test_async_whole_object_ending_by_start_is_not_read(conn):
    streams: list[CountingStream] = []
    ranges: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        ranges.append(request.headers["Range"])
        streams.append(CountingStream(explode=True))
        return httpx.Response(200, headers={"Content-Length": str(SIZE)}, stream=streams[-1])

    for start in (SIZE, SIZE + 10):
        part = asyncio.run(_read(_async_hook(handler), start=start, length=65536))
        assert part == {"data": b"", "start": start, "total": SIZE}
    assert ranges[-1] == f"bytes={SIZE + 10}-{SIZE + 10 + 65535}"
    assert [(s.pulled, s.closed) for s in streams] == [(0, True), (0, True)]


def test_async_whole_object_reads_at_most_start_plus_length(conn):
    stream = CountingStream()
    hook = _async_hook(
        lambda request: httpx.Response(200, headers={"Content-Length": str(SIZE)}, stream=stream)
    )
    part = asyncio.run(_read(hook, start=100_000, length=1000))
    assert part == {"data": _content(0, 101_000), "start": 0, "total": SIZE}
    assert stream.pulled <= 101_000 + CHUNK and stream.closed


def test_async_whole_object_without_length(conn):
    # No Content-Length: a body that ends before start + length gives its size; a longer one, None.
    short = CountingStream(size=3000)
    hook = _async_hook(lambda request: httpx.Response(200, stream=short))
    assert asyncio.run(_read(hook, start=3000, length=100)) == {
        "data": _content(0, 3000),
        "start": 0,
        "total": 3000,
    }
    long = CountingStream()
    hook = _async_hook(lambda request: httpx.Response(200, stream=long))
    part = asyncio.run(_read(hook, start=200_000, length=100))
    assert part == {"data": _content(0, 200_100), "start": 0, "total": None}
    assert long.pulled <= 200_100 + CHUNK and long.closed and short.closed


def test_async_206_and_416_unchanged(conn):
    answers = iter(
        [
            httpx.Response(206, headers={"Content-Range": "bytes 10-14/99"}, content=b"abcde"),
            httpx.Response(416, headers={"Content-Range": "bytes */99"}, content=b""),
        ]
    )
    hook = _async_hook(lambda request: next(answers))

    async def go() -> list[dict[str, Any]]:
        try:
            return [
                await hook.read_log_range(LINK, start=10, length=5),
                await hook.read_log_range(LINK, start=99, length=5),
            ]
        finally:
            await hook.close()

    assert asyncio.run(go()) == [
        {"data": b"abcde", "start": 10, "total": 99},
        {"data": b"", "start": 99, "total": None},
    ]


def test_async_error_answers_typed_with_a_bounded_body_and_retried(conn):
    streams: list[CountingStream] = []
    expired = (
        b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>RequestTimeTooSkewed</Code>'
        b"<Message>Request has expired.</Message></Error>"
    )

    def handler(request: httpx.Request) -> httpx.Response:
        if len(streams) < 2:  # two huge 503s (retried), then an expired link
            streams.append(CountingStream())
            return httpx.Response(503, headers={"Content-Length": str(SIZE)}, stream=streams[-1])
        streams.append(CountingStream(content=expired))
        return httpx.Response(403, headers={"Content-Type": "application/xml"}, stream=streams[-1])

    with pytest.raises(ModelArtsLogLinkExpiredError):
        asyncio.run(_read(_async_hook(handler), start=0, length=10))
    assert len(streams) == 3
    assert all(s.closed for s in streams)
    assert all(s.pulled <= ERROR_BODY_LIMIT + CHUNK for s in streams)

    streams.clear()
    with pytest.raises(ModelArtsApiError) as info:
        asyncio.run(_read(_async_hook(handler, retries=0), start=0, length=10))
    assert info.value.status_code == 503 and streams[0].closed


def test_async_transport_error_while_reading_is_typed(conn):
    class Broken(CountingStream):
        async def __aiter__(self):  # type: ignore[no-untyped-def]
            yield b"x" * 10
            raise httpx.ReadError("connection reset")

    stream = Broken()
    hook = _async_hook(lambda request: httpx.Response(200, stream=stream))
    with pytest.raises(ModelArtsTransportError):
        asyncio.run(_read(hook, start=0, length=100))
    assert stream.closed


def test_async_streamed_answer_closed_on_cancellation(conn):
    stream = CountingStream(hang_after=CHUNK)
    hook = _async_hook(lambda request: httpx.Response(200, stream=stream))

    async def go() -> None:
        task = asyncio.create_task(hook.read_log_range(LINK, start=10 * CHUNK, length=10))
        while stream.pulled < CHUNK:
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await hook.close()

    asyncio.run(asyncio.wait_for(go(), 10))
    assert stream.closed and stream.pulled == CHUNK


# --------------------------------------------------------------------------------------------------
# The pure helpers
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "headers", "start", "expected"),
    [
        (200, {"Content-Length": "100"}, 100, 100),
        (200, {"Content-Length": "100"}, 150, 100),
        (200, {"Content-Length": "100"}, 99, None),
        (200, {}, 100, None),
        (200, {"Content-Length": "x"}, 100, None),
        (200, {"Content-Length": "100", "Content-Encoding": "gzip"}, 100, None),
        (200, {"Content-Length": "100", "Content-Encoding": "identity"}, 100, 100),
        (206, {"Content-Length": "100"}, 100, None),
    ],
)
def test_whole_object_ends_by(status, headers, start, expected):
    assert whole_object_ends_by(status, headers, start) == expected


def test_range_total():
    assert range_total({"Content-Length": "7"}, b"abc", 3) == 7
    assert range_total({}, b"ab", 3) == 2
    assert range_total({}, b"abc", 3) is None


# --------------------------------------------------------------------------------------------------
# What the log streamer makes of a "nothing new" answer at the end of the log
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("total", [SIZE, SIZE - 5, None])
def test_streamer_state_takes_nothing_new_as_nothing(total):
    state = LogStreamState()
    cursor = state.cursor("worker-0")
    cursor.offset, cursor.pending = SIZE, b"partial line"
    lines = state.apply_range("worker-0", b"", start=SIZE, total=total, max_bytes=65536, where="there")
    assert lines == []
    assert (cursor.offset, cursor.pending, cursor.skip_partial) == (SIZE, b"partial line", False)


def test_streamer_polls_at_the_end_without_reading(conn, requests_mock, monkeypatch):
    body = CountingBody(explode=True)
    requests_mock.get(OBJECT, status_code=200, headers={"Content-Length": str(SIZE)}, body=body)
    hook = _sync_hook()
    monkeypatch.setattr(hook, "get_task_log_url", lambda *args, **kwargs: LINK)
    lines: list[str] = []
    state = {"version": 1, "cursors": {"worker-0": {"offset": SIZE, "pending": "", "skip_partial": False}}}
    streamer = LogStreamer(
        hook=hook,
        training_job_id="job-1",
        state=state,
        stream_log_tasks=["worker-0"],
        max_bytes=65536,
        emit=lines.append,
        clock=lambda: 1_700_000_000.0,
    )
    job = {"metadata": {"id": "job-1"}, "status": {"phase": "Completed", "tasks": ["worker-0"]}}
    for _ in range(3):
        streamer.poll(job)
    streamer.poll(job, final=True)
    assert lines == []
    assert streamer.state.cursors["worker-0"].offset == SIZE
    assert requests_mock.call_count == 4 and body.read_bytes == 0
