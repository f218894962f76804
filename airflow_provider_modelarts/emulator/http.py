"""HTTP plumbing of the emulator: the threaded server, the request handler, ranges and streaming."""

from __future__ import annotations

import contextlib
import json
import re
import socket
import sys
import threading
import traceback
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol

from airflow_provider_modelarts.emulator.logs import LogSource
from airflow_provider_modelarts.emulator.state import Counters

__all__ = [
    "WRITE_CHUNK",
    "EmulatorHandler",
    "EmulatorServer",
    "Reject",
    "RequestApp",
    "parse_range",
    "send_all",
]

WRITE_CHUNK = 1024 * 1024


class Reject(Exception):
    """An error answer decided while handling a request."""

    def __init__(self, status: int, error_code: str, error_msg: str, *, apig: bool = False) -> None:
        super().__init__(error_msg)
        self.status = status
        self.error_code = error_code
        self.error_msg = error_msg
        self.apig = apig


class RequestApp(Protocol):
    """What the server hands each request to."""

    counters: Counters

    def handle(self, handler: EmulatorHandler, method: str) -> None:
        """Answer one request."""


class EmulatorServer(ThreadingHTTPServer):
    """A threaded HTTP/1.1 server that remembers its open connections so that it can cut them."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], app: RequestApp) -> None:
        self.app = app
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, EmulatorHandler)

    def track(self, conn: socket.socket) -> None:
        """Remember an open connection."""
        with self._connections_lock:
            self._connections.add(conn)

    def untrack(self, conn: socket.socket) -> None:
        """Forget a closed connection."""
        with self._connections_lock:
            self._connections.discard(conn)

    def cut_connections(self) -> None:
        """Shut down every open connection."""
        with self._connections_lock:
            connections = list(self._connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


def parse_range(value: str, size: int) -> tuple[int, int] | str | None:
    """Parse a single ``bytes=`` range; None means "ignore it and send everything"."""
    match = re.fullmatch(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*", value)
    if not match or (not match.group(1) and not match.group(2)):
        return None
    first, last = match.group(1), match.group(2)
    if not first:
        length = int(last)
        if length == 0:
            return "unsatisfiable"
        return max(0, size - length), size
    start = int(first)
    end = size if not last else min(size, int(last) + 1)
    if last and int(last) < start:
        return None
    if start >= size:
        return "unsatisfiable"
    return start, end


class EmulatorHandler(BaseHTTPRequestHandler):
    """One connection: reads requests, hands them to the server's app and writes the answers."""

    protocol_version = "HTTP/1.1"
    server_version = "modelarts-emulator"
    sys_version = ""
    server: EmulatorServer
    request_id: str = ""
    responded: bool = False

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.track(self.connection)

    def finish(self) -> None:
        self.server.untrack(self.connection)
        with contextlib.suppress(OSError):
            super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        # Request lines carry signed-URL signatures; stay quiet.
        return

    def parse_request(self) -> bool:
        self.request_id = uuid.uuid4().hex
        self.responded = False
        return super().parse_request()

    def _dispatch(self) -> None:
        try:
            self.server.app.handle(self, self.command)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as err:
            # A complete error answer keeps the connection usable; a half-sent one cannot be repaired.
            traceback.print_exc(file=sys.stderr)
            if self.responded:
                self.close_connection = True
            else:
                self.send_error_json(
                    500, "ModelArts.0010", f"Internal error in the emulator: {type(err).__name__}"
                )

    do_GET = _dispatch
    do_POST = _dispatch
    do_PUT = _dispatch
    do_DELETE = _dispatch
    do_HEAD = _dispatch
    do_PATCH = _dispatch

    def read_body(self) -> bytes:
        """The request body, plain or chunked."""
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            parts = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                parts.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(parts)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def send_response(self, code: int, message: str | None = None) -> None:
        if not getattr(self, "request_id", None):
            self.request_id = uuid.uuid4().hex
        self.responded = True
        super().send_response(code, message)
        self.send_header("X-Request-Id", self.request_id)

    def send_body(
        self, status: int, data: bytes, content_type: str, extra_headers: dict[str, str] | None = None
    ) -> None:
        """Send a complete answer (no body on HEAD)."""
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for name, value in (extra_headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def send_json(self, status: int, doc: Any, extra_headers: dict[str, str] | None = None) -> None:
        """Send a JSON answer."""
        self.send_body(status, json.dumps(doc).encode("utf-8"), "application/json", extra_headers)

    def send_error_json(
        self,
        status: int,
        error_code: str,
        error_msg: str,
        *,
        apig: bool = False,
        extra_headers: dict[str, str] | None = None,
    ) -> None:
        """Send a ModelArts (or, with ``apig``, an API gateway) error document."""
        doc: dict[str, Any] = {"error_code": error_code, "error_msg": error_msg}
        if apig:
            doc["request_id"] = self.request_id
        self.send_json(status, doc, extra_headers)

    def send_obs_error(
        self, status: int, code: str, message: str, extra_headers: dict[str, str] | None = None
    ) -> None:
        """Send an OBS XML error document."""
        data = (
            '<?xml version="1.0" encoding="UTF-8"?>\n<Error>'
            f"<Code>{code}</Code><Message>{message}</Message>"
            f"<RequestId>{self.request_id}</RequestId><HostId>modelarts-emulator</HostId></Error>"
        ).encode()
        headers = {"x-obs-request-id": self.request_id, **(extra_headers or {})}
        self.send_body(status, data, "application/xml", headers)

    def stream(self, log: LogSource, start: int, end: int, limit: int | None) -> None:
        """Send bytes ``[start, end)`` of a log straight to the socket, stopping after ``limit`` bytes.

        ``bytes_served`` grows before each write, so a client that has read the bytes sees them counted.
        """
        sock = self.connection
        counters = self.server.app.counters
        sent = 0
        pending: list[bytes | memoryview] = []
        pending_size = 0
        for chunk in log.iter_range(start, end):
            if limit is not None and sent + pending_size + len(chunk) > limit:
                cut = chunk[: limit - sent - pending_size]
                pending.append(cut)
                pending_size += len(cut)
                break
            pending.append(chunk)
            pending_size += len(chunk)
            if pending_size >= WRITE_CHUNK:
                counters.add("bytes_served", pending_size)
                sent += send_all(sock, pending)
                pending, pending_size = [], 0
        if pending:
            counters.add("bytes_served", pending_size)
            sent += send_all(sock, pending)
        if limit is not None and sent < end - start:
            self.close_connection = True
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


def send_all(sock: socket.socket, buffers: list[bytes | memoryview]) -> int:
    """Write all buffers with as few system calls as possible (scatter-gather ``sendmsg``)."""
    total = sum(len(b) for b in buffers)
    views = [memoryview(b) for b in buffers if len(b)]
    while views:
        sent = sock.sendmsg(views)
        while views and sent >= len(views[0]):
            sent -= len(views[0])
            views.pop(0)
        if sent and views:
            views[0] = views[0][sent:]
    return total
