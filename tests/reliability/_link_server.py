"""A misbehaving log-link server of the tests' own: real HTTP on 127.0.0.1, written byte by byte.

Each request is answered by ``behave(request) -> Reply``; a reply can omit ``Content-Length`` (the body
is then delimited by closing the connection), claim a length it does not send, cut the body after some
bytes, gzip it, trickle it, state ``*`` totals, or redirect. Every request is recorded.
"""

from __future__ import annotations

import gzip
import json
import re
import socketserver
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import tenacity

from airflow_provider_modelarts.connection import DEFAULT_MAX_RETRIES
from airflow_provider_modelarts.exceptions import ModelArtsLogLinkExpiredError
from airflow_provider_modelarts.hooks.modelarts import ModelArtsHook


@dataclass
class Request:
    number: int
    method: str
    path: str
    headers: dict[str, str]

    @property
    def offset(self) -> int | None:
        m = re.match(r"bytes=(\d+)-$", self.headers.get("range", ""))
        return int(m.group(1)) if m else None


@dataclass
class Reply:
    """One answer.

    :param status: HTTP status.
    :param headers: headers (``Content-Length`` is added unless ``length`` is ``None``).
    :param body: body bytes.
    :param length: ``"auto"`` (the body's length), ``None`` (no header: close-delimited) or a number.
    :param cut: close the connection after this many body bytes.
    :param trickle: seconds to wait between pieces of ``piece`` bytes.
    :param piece: bytes per write when trickling.
    """

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    length: int | str | None = "auto"
    cut: int | None = None
    trickle: float = 0.0
    piece: int = 64 * 1024


def serve_range(
    data: bytes,
    req: Request,
    *,
    total: str | None = None,
    ignore_range: bool = False,
    **kw: object,
) -> Reply:
    """The reply of a well-behaved store for ``data`` (honours ``Range``; 416 past the end)."""
    offset = req.offset
    if offset is None or ignore_range:
        return Reply(body=data, **kw)  # type: ignore[arg-type]
    if offset >= len(data):
        return Reply(status=416, headers={"Content-Range": f"bytes */{len(data)}"}, body=b"")
    stated = total if total is not None else str(len(data))
    headers = {"Content-Range": f"bytes {offset}-{len(data) - 1}/{stated}"}
    return Reply(status=206, headers=headers, body=data[offset:], **kw)  # type: ignore[arg-type]


def gzip_reply(data: bytes, **kw: object) -> Reply:
    return Reply(headers={"Content-Encoding": "gzip"}, body=gzip.compress(data, mtime=0), **kw)  # type: ignore[arg-type]


class LinkServer:
    """The server. ``behave`` may be replaced at any time."""

    def __init__(self, behave: Callable[[Request], Reply] | None = None) -> None:
        self.behave: Callable[[Request], Reply] = behave or (lambda req: Reply())
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        outer = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                line = self.rfile.readline().decode("latin-1").strip()
                if not line:
                    return
                method, path, _ = line.split(" ", 2)
                headers: dict[str, str] = {}
                while True:
                    h = self.rfile.readline().decode("latin-1")
                    if h in ("\r\n", "\n", ""):
                        break
                    k, _, v = h.partition(":")
                    headers[k.strip().lower()] = v.strip()
                with outer._lock:
                    req = Request(len(outer.requests) + 1, method, path, headers)
                    outer.requests.append(req)
                outer._send(self.wfile, outer.behave(req))

        self._server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)

    def _send(self, wfile, reply: Reply) -> None:  # type: ignore[no-untyped-def]
        head = [f"HTTP/1.1 {reply.status} X", "Connection: close"]
        head += [f"{k}: {v}" for k, v in reply.headers.items()]
        if reply.length == "auto":
            head.append(f"Content-Length: {len(reply.body)}")
        elif reply.length is not None:
            head.append(f"Content-Length: {reply.length}")
        try:
            wfile.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1"))
            body = reply.body if reply.cut is None else reply.body[: reply.cut]
            step = reply.piece if reply.trickle else len(body) or 1
            for i in range(0, len(body), step):
                wfile.write(body[i : i + step])
                wfile.flush()
                if reply.trickle:
                    time.sleep(reply.trickle)
        except OSError:
            pass

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def link(self, n: int, task: str = "worker-0") -> str:
        return f"{self.url}/logs/job-1/{task}.log?AccessKeyId=AK&Expires=9999999999&Signature=SIGNATURE{n}"

    def __enter__(self) -> LinkServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def gets(self) -> list[Request]:
        return [r for r in self.requests if r.method == "GET"]


class HookLinkSource:
    """Links to ``server`` from a fake link API; the links are read by the real ``ModelArtsHook``."""

    def __init__(self, hook, server: LinkServer, link: Callable[[int, str], str] | None = None) -> None:  # type: ignore[no-untyped-def]
        self.hook = hook
        self.server = server
        self.links = 0
        self._link = link or server.link

    def get_task_log_url(self, training_job_id: str, task_id: str, download: bool = False) -> str:
        self.links += 1
        return self._link(self.links, task_id)

    def open_log_stream(self, url: str, *, offset: int = 0, timeout: float | None = None):  # type: ignore[no-untyped-def]
        return self.hook.open_log_stream(url, offset=offset, timeout=timeout)


__all__ = [
    "HookLinkSource",
    "LinkServer",
    "ModelArtsLogLinkExpiredError",
    "Reply",
    "Request",
    "gzip_reply",
    "serve_range",
]


DATA = b"".join(f"line {i} {'x' * (i % 53)}\n".encode() for i in range(3000))  # ~ 90 KB


def make_hook(monkeypatch: Any, *, retries: int = DEFAULT_MAX_RETRIES, **extra: Any) -> ModelArtsHook:
    conn = {
        "conn_type": "modelarts",
        "login": "AK",
        "password": "SK-secret-value",
        "extra": {"project_id": "p1", "endpoint": "http://127.0.0.1:9", **extra},
    }
    monkeypatch.setenv("AIRFLOW_CONN_MODELARTS_LINKS", json.dumps(conn))
    return ModelArtsHook(
        "modelarts_links", retry_wait=tenacity.wait_none(), max_retries=retries, request_timeout=5
    )
