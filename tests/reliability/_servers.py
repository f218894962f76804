"""A tiny scripted HTTP server for answers the emulator will not give (malformed bodies, odd links).

Every request is recorded so tests can prove no request left ``/v2/{project_id}/``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Answer:
    """One scripted answer.

    :param status: HTTP status.
    :param body: raw body bytes (or str, sent as utf-8).
    :param content_type: ``Content-Type`` header.
    :param headers: more headers.
    """

    status: int = 200
    body: bytes | str = b"{}"
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)


class ScriptedServer:
    """``http.server`` on 127.0.0.1 that answers with ``route(method, path) -> Answer`` and records requests.

    :param route: picks the answer for a request; the default answers ``{}``.
    """

    def __init__(self, route: Callable[[str, str], Answer] | None = None) -> None:
        self.route: Callable[[str, str], Answer] = route or (lambda method, path: Answer())
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                outer.requests.append((self.command, self.path, dict(self.headers.items())))
                answer = outer.route(self.command, self.path)
                body = answer.body.encode() if isinstance(answer.body, str) else answer.body
                self.send_response(answer.status)
                self.send_header("Content-Type", answer.content_type)
                self.send_header("Content-Length", str(len(body)))
                for k, v in answer.headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _answer

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def __enter__(self) -> ScriptedServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def paths(self) -> list[str]:
        return [path for _, path, _ in self.requests]
