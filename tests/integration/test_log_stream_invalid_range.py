"""Ranged log reads at the end of a large log over real HTTP, against servers that send the whole object.

OBS answers an invalid range (one starting at or past the end, which a streaming cursor at the end of a
finished log asks for on every poll) with 200 and the whole object rather than 416. The hooks must not
download that object: a server of the test's own counts the bytes it managed to write per request, and
the emulator (``knobs.invalid_range_whole_object``) counts ``bytes_served``.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import socket
import socketserver
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import requests
import tenacity

from airflow_provider_modelarts.hooks.modelarts import ModelArtsAsyncHook, ModelArtsHook
from airflow_provider_modelarts.log_stream import AsyncLogStreamer, LogStreamer

SIZE = 32 * 1024 * 1024
PIECE = 64 * 1024
FAR_LESS = 8 * 1024 * 1024  # what socket buffers may take in before the client has closed
DATA = random.Random(7).randbytes(SIZE)


@dataclass
class Served:
    range: str | None
    status: int = 0
    written: int = 0
    done: threading.Event = field(default_factory=threading.Event)


class ObjectServer:
    """Serves :data:`DATA` on 127.0.0.1 over HTTP/1.1, in 64 KiB writes, counting what each write got out.

    :param honour_valid: answer a satisfiable ``Range`` with 206; else every answer is 200 and the whole
        object (a server that ignores ``Range``). An unsatisfiable range always gets the whole object, as
        OBS does.
    """

    def __init__(self, *, honour_valid: bool) -> None:
        self.honour_valid = honour_valid
        self.served: list[Served] = []
        outer = self

        class Handler(socketserver.StreamRequestHandler):
            def setup(self) -> None:
                super().setup()
                # A fixed send buffer: what a closed client never read is bounded by it (plus the client's
                # receive window), not by however far the kernel would autotune it.
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 256 * 1024)

            def handle(self) -> None:
                line = self.rfile.readline().decode("latin-1")
                headers: dict[str, str] = {}
                while True:
                    h = self.rfile.readline().decode("latin-1")
                    if h in ("\r\n", "\n", ""):
                        break
                    name, _, value = h.partition(":")
                    headers[name.strip().lower()] = value.strip()
                if not line.startswith("GET "):
                    return
                record = Served(headers.get("range"))
                outer.served.append(record)
                try:
                    outer.answer(self.connection, record)
                finally:
                    record.done.set()

        self._server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)

    def answer(self, sock: socket.socket, record: Served) -> None:
        match = re.fullmatch(r"bytes=(\d+)-(\d+)", record.range or "")
        first, last = (int(match.group(1)), int(match.group(2))) if match else (0, SIZE - 1)
        if self.honour_valid and match and first < SIZE:
            end = min(SIZE, last + 1)
            record.status = 206
            head = f"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {first}-{end - 1}/{SIZE}\r\n"
        else:
            first, end = 0, SIZE
            record.status = 200
            head = "HTTP/1.1 200 OK\r\n"
        head += f"Content-Length: {end - first}\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n"
        body = memoryview(DATA)[first:end]
        try:
            sock.sendall(head.encode("latin-1"))
            for offset in range(0, len(body), PIECE):
                sock.sendall(body[offset : offset + PIECE])
                record.written += len(body[offset : offset + PIECE])
        except OSError:
            pass  # the client closed the connection: what it did not want was never sent

    @property
    def link(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/logs/job-1/worker-0.log?AccessKeyId=AK&Expires=9999999999&Signature=S"

    def last(self) -> Served:
        record = self.served[-1]
        assert record.done.wait(10), "the server is still writing"
        return record

    def __enter__(self) -> ObjectServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def conn(monkeypatch: pytest.MonkeyPatch) -> None:
    extra = {"project_id": "0123456789abcdef0123456789abcdef", "endpoint": "http://127.0.0.1:9"}
    conn = {"conn_type": "modelarts", "login": "AK", "password": "SK", "extra": extra}
    monkeypatch.setenv("AIRFLOW_CONN_MODELARTS_DEFAULT", json.dumps(conn))


@pytest.fixture(params=[False, True], ids=["ignores-range", "obs-like"])
def server(request: pytest.FixtureRequest) -> Iterator[ObjectServer]:
    with ObjectServer(honour_valid=request.param) as srv:
        yield srv


def _sync_read(url: str, **kwargs: int) -> dict[str, Any]:
    return ModelArtsHook(max_retries=0, request_timeout=10).read_log_range(url, **kwargs)


def _async_read(url: str, **kwargs: int) -> dict[str, Any]:
    async def go() -> dict[str, Any]:
        hook = ModelArtsAsyncHook(max_retries=0, request_timeout=10)
        try:
            return await hook.read_log_range(url, **kwargs)
        finally:
            await hook.close()

    return asyncio.run(go())


READERS: dict[str, Callable[..., dict[str, Any]]] = {"sync": _sync_read, "async": _async_read}


@pytest.mark.parametrize("read", READERS.values(), ids=READERS.keys())
def test_a_read_at_the_end_does_not_download_the_object(conn, server, read):
    for start in (SIZE, SIZE + 1000):
        assert read(server.link, start=start, length=65536) == {"data": b"", "start": start, "total": SIZE}
        served = server.last()
        assert served.range == f"bytes={start}-{start + 65535}"
        assert served.status == 200
        assert served.written < FAR_LESS, f"the server wrote {served.written} bytes of {SIZE}"


@pytest.mark.parametrize("read", READERS.values(), ids=READERS.keys())
def test_a_read_inside_the_log_gets_the_right_bytes(conn, server, read):
    start, length = 3_000_000, 5000
    part = read(server.link, start=start, length=length)
    if server.honour_valid:
        assert part == {"data": DATA[start : start + length], "start": start, "total": SIZE}
    else:  # the whole object from byte 0, read only as far as the bytes wanted
        assert part == {"data": DATA[: start + length], "start": 0, "total": SIZE}
        assert server.last().written < start + length + FAR_LESS


# --------------------------------------------------------------------------------------------------
# The emulator with knobs.invalid_range_whole_object: a streamer polling a finished 32 MiB log
# --------------------------------------------------------------------------------------------------

GENERATED = {
    "id": "job-big",
    "timeline": [{"phase": "Running", "at": 0}, {"phase": "Completed", "at": 1}],
    "tasks": [{"id": "worker-0", "exit_code": 0, "log": {"generate": {"size": SIZE, "seed": 5}}}],
}


def _settled(read: Callable[[], int]) -> int:
    """A counter's value once the server has stopped moving it (a cut answer ends a moment later)."""
    last = read()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        time.sleep(0.3)
        now = read()
        if now == last:
            return now
        last = now
    raise AssertionError("the emulator kept sending")


@pytest.fixture
def big_emu(emulator_factory, monkeypatch):
    emu = emulator_factory({"jobs": []})
    emu.add_job(GENERATED)
    emu.advance(5)
    emu.knobs.invalid_range_whole_object = True
    monkeypatch.setenv("AIRFLOW_CONN_MODELARTS_DEFAULT", emu.connection_json())
    # The knob makes the emulator answer like OBS: 200 and the whole object for a range past the end.
    url = emu.sign_log_url("job-big", "worker-0")
    with requests.get(url, headers={"Range": f"bytes={SIZE}-"}, stream=True, timeout=10) as answer:
        assert answer.status_code == 200 and answer.headers["Content-Length"] == str(SIZE)
    with requests.get(url, headers={"Range": "bytes=10-19"}, timeout=10) as answer:
        assert answer.status_code == 206
    return emu


def _streamer(cls: type, hook: Any, emu: Any, lines: list[str]) -> Any:
    return cls(
        hook=hook,
        training_job_id="job-big",
        state=None,
        stream_log_tasks=["worker-0"],
        max_bytes=65536,
        emit=lines.append,
        clock=emu.now,
    )


def _check_last_poll(emu: Any, streamer: Any, lines: list[str], before: int) -> None:
    assert len(lines) == before, lines[before:]
    assert streamer.state.cursors["worker-0"].offset == SIZE
    assert emu.counters["obs_get"] == 1 and emu.counters["log_url"] == 0  # asked once, on the same link
    served = _settled(lambda: emu.counters["bytes_served"])
    assert served < FAR_LESS, f"the emulator sent {served} bytes of a {SIZE}-byte log"


def test_sync_streamer_at_the_end_of_a_finished_log(big_emu):
    emu = big_emu
    hook = ModelArtsHook(retry_wait=tenacity.wait_none(), max_retries=0)
    lines: list[str] = []
    streamer = _streamer(LogStreamer, hook, emu, lines)
    job = hook.get_training_job("job-big")
    streamer.poll(job)  # the first 64 KiB, then a skip to the last byte
    streamer.poll(job)  # the last byte
    assert streamer.state.cursors["worker-0"].offset == SIZE
    assert any("bytes not shown" in line for line in lines)
    before = len(lines)
    _settled(lambda: emu.counters["bytes_served"])
    emu.reset_counters()
    streamer.poll(job)  # Range: bytes=SIZE-...: 200 and the whole 32 MiB object
    _check_last_poll(emu, streamer, lines, before)
    assert not any("not read" in line for line in lines)


def test_async_streamer_at_the_end_of_a_finished_log(big_emu):
    emu = big_emu
    lines: list[str] = []

    async def go() -> None:
        hook = ModelArtsAsyncHook(retry_wait=tenacity.wait_none(), max_retries=0)
        try:
            streamer = _streamer(AsyncLogStreamer, hook, emu, lines)
            job = await hook.get_training_job("job-big")
            await streamer.poll(job)
            await streamer.poll(job)
            assert streamer.state.cursors["worker-0"].offset == SIZE
            before = len(lines)
            await asyncio.to_thread(_settled, lambda: emu.counters["bytes_served"])
            emu.reset_counters()
            await streamer.poll(job)
            await asyncio.to_thread(_check_last_poll, emu, streamer, lines, before)
        finally:
            await hook.close()

    asyncio.run(go())
    assert not any("not read" in line for line in lines)
