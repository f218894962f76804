"""Why a request got no HTTP answer, in words a user can act on, for ``requests`` and ``httpx`` alike.

The text of a transport exception often holds the full URL, query string included (a pre-signed link's
signature, for instance), so messages are built only from the exception types in the chain and from the
scheme, host and port of the URL: never from the exceptions' own text.
"""

from __future__ import annotations

import errno
import socket
import ssl
from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx
import requests

__all__ = ["describe_no_answer", "endpoint_of"]

_DEFAULT_PORTS = {"http": 80, "https": 443}
_UNREACHABLE = {errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EADDRNOTAVAIL}


def endpoint_of(url: str) -> str:
    """``scheme://host:port`` of ``url`` (default port filled in), without user info, path or query.

    :param url: an absolute URL.
    """
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "an invalid URL"
    scheme = parts.scheme.lower() or "?"
    host = parts.hostname or "?"
    if ":" in host:
        host = f"[{host}]"
    port = port or _DEFAULT_PORTS.get(scheme)
    return f"{scheme}://{host}:{port}" if port else f"{scheme}://{host}"


def _chain(err: BaseException) -> Iterator[BaseException]:
    """``err`` and every exception it wraps (``__cause__``, ``__context__``, urllib3's ``reason``)."""
    seen: set[int] = set()
    todo: list[BaseException] = [err]
    while todo:
        exc = todo.pop(0)
        if id(exc) in seen:
            continue
        seen.add(id(exc))
        yield exc
        for inner in (exc.__cause__, exc.__context__, getattr(exc, "reason", None), *exc.args):
            if isinstance(inner, BaseException):
                todo.append(inner)


def _cause(chain: list[BaseException]) -> str:
    kinds = tuple(type(e).__name__ for e in chain)
    if any(isinstance(e, ConnectionRefusedError) for e in chain):
        return "connection refused (is anything listening on that port?)"
    if any(isinstance(e, socket.gaierror) for e in chain) or "NameResolutionError" in kinds:
        return "DNS lookup failed (unknown host name?)"
    if any(isinstance(e, (ssl.SSLError, requests.exceptions.SSLError)) for e in chain):
        return "TLS handshake failed (certificate not trusted, or not a TLS port? see extra 'verify')"
    if any(isinstance(e, (requests.exceptions.ConnectTimeout, httpx.ConnectTimeout)) for e in chain):
        return "connect timeout (host down, or a firewall dropping packets?)"
    if any(isinstance(e, (requests.exceptions.Timeout, httpx.TimeoutException, TimeoutError)) for e in chain):
        return "read timeout: connected, but no answer within the timeout (extra 'timeout')"
    if any(isinstance(e, (requests.exceptions.ProxyError, httpx.ProxyError)) for e in chain):
        return "the proxy refused or failed the request (check HTTP(S)_PROXY / NO_PROXY)"
    if any(isinstance(e, OSError) and e.errno in _UNREACHABLE for e in chain):
        return "network or host unreachable"
    if any(isinstance(e, ConnectionResetError) for e in chain):
        return "connection reset by the server"
    if "RemoteDisconnected" in kinds or any(isinstance(e, httpx.RemoteProtocolError) for e in chain):
        return "the server closed the connection without an answer"
    return "connection failed"


def describe_no_answer(err: BaseException, *, url: str) -> str:
    """``"<scheme>://<host>:<port>: <cause> (<ExceptionType>)"`` for a request that got no answer.

    :param err: the exception ``requests`` or ``httpx`` raised.
    :param url: the URL the request went to (only scheme, host and port are used).
    """
    chain = list(_chain(err))
    return f"{endpoint_of(url)}: {_cause(chain)} ({type(err).__name__})"
