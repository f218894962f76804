"""describe_no_answer: real sockets that refuse, hang, reset or speak plain HTTP to a TLS client."""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
from collections.abc import Iterator
from unittest import mock

import httpx
import pytest
import requests

from airflow_provider_modelarts.transport_errors import describe_no_answer, endpoint_of

SECRET = "SiGnAtUrE-SECRET"


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """A loopback TCP server that does one thing to every connection: hang, reset, or answer HTTP."""

    def __init__(self, behaviour: str) -> None:
        self.behaviour = behaviour
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.accepted: list[socket.socket] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted.append(conn)
            if self.behaviour == "reset":
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                conn.recv(65536)
                conn.close()
            elif self.behaviour == "http":
                conn.recv(65536)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
                conn.close()
            # "hang": keep the connection open and never answer

    def close(self) -> None:
        self.sock.close()
        for conn in self.accepted:
            conn.close()


@pytest.fixture
def server() -> Iterator:
    servers: list[Server] = []

    def make(behaviour: str) -> Server:
        servers.append(Server(behaviour))
        return servers[-1]

    yield make
    for s in servers:
        s.close()


def sync_error(url: str, timeout: float = 2.0) -> BaseException:
    with pytest.raises(requests.RequestException) as info:
        requests.get(url, timeout=timeout)
    return info.value


def async_error(url: str, timeout: float = 2.0) -> BaseException:
    async def go() -> None:
        async with httpx.AsyncClient() as client:
            await client.get(url, timeout=timeout)

    with pytest.raises(httpx.HTTPError) as info:
        asyncio.run(go())
    return info.value


CLIENTS = {"requests": sync_error, "httpx": async_error}


@pytest.mark.parametrize("client", CLIENTS)
def test_refused_names_scheme_host_port_and_never_the_query(client):
    port = closed_port()
    url = f"http://127.0.0.1:{port}/v2/p/training-jobs/x?Signature={SECRET}"
    message = describe_no_answer(CLIENTS[client](url), url=url)
    assert message.startswith(f"http://127.0.0.1:{port}: connection refused"), message
    assert SECRET not in message
    assert "?" not in message.split("(")[0]


@pytest.mark.parametrize("client", CLIENTS)
def test_read_timeout(client, server):
    srv = server("hang")
    url = f"http://127.0.0.1:{srv.port}/x"
    message = describe_no_answer(CLIENTS[client](url, timeout=0.3), url=url)
    assert message.startswith(f"http://127.0.0.1:{srv.port}: read timeout"), message


@pytest.mark.parametrize("client", CLIENTS)
def test_tls_to_a_plain_http_port(client, server):
    srv = server("http")
    url = f"https://127.0.0.1:{srv.port}/x"
    message = describe_no_answer(CLIENTS[client](url), url=url)
    assert message.startswith(f"https://127.0.0.1:{srv.port}: TLS handshake failed"), message


@pytest.mark.parametrize("client", CLIENTS)
def test_reset_or_closed_without_answer(client, server):
    srv = server("reset")
    url = f"http://127.0.0.1:{srv.port}/x"
    message = describe_no_answer(CLIENTS[client](url), url=url)
    assert message.split(": ", 1)[1].startswith(("connection reset", "the server closed the connection")), (
        message
    )


@pytest.mark.parametrize("client", CLIENTS)
def test_dns_failure(client):
    def no_such_host(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    url = "https://modelarts.nowhere.invalid/v2"
    with mock.patch("socket.getaddrinfo", no_such_host):
        err = CLIENTS[client](url)
    message = describe_no_answer(err, url=url)
    assert message.startswith("https://modelarts.nowhere.invalid:443: DNS lookup failed"), message


def test_connect_timeout_and_unknown_errors_keep_the_type():
    url = "https://10.0.0.1:8443/x"
    err = requests.ConnectTimeout("HTTPSConnectionPool(host='10.0.0.1'): /x?Signature=abc")
    assert describe_no_answer(err, url=url) == (
        "https://10.0.0.1:8443: connect timeout (host down, or a firewall dropping packets?) (ConnectTimeout)"
    )
    odd = requests.exceptions.InvalidHeader("bad header value in /x?Signature=abc")
    assert describe_no_answer(odd, url=url) == "https://10.0.0.1:8443: connection failed (InvalidHeader)"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://127.0.0.1:8081/x?a=b", "http://127.0.0.1:8081"),
        ("https://user:pw@host.example/x", "https://host.example:443"),
        ("http://[::1]/x", "http://[::1]:80"),
        ("http://host:99999/", "an invalid URL"),
    ],
)
def test_endpoint_of(url, expected):
    assert endpoint_of(url) == expected
