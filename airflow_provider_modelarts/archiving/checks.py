"""Pure checks of what the link server answers: no I/O, so each rule is tested on its own.

A log is complete only when its total size is known from the server and equals the bytes stored:

* a ``200`` without ``Content-Encoding`` states the total with ``Content-Length``;
* a ``206`` states it after the ``/`` of ``Content-Range`` (``*`` means unknown);
* a content-encoded ``200`` (gzip, deflate) states the encoded size only; the decoded size is known when
  the compressed stream ends with its trailer (checked by zlib: CRC-32 and length for gzip);
* otherwise (close-delimited body, ``*`` total) the copy asks for the range past the end: ``416`` proves
  nothing follows.

A total once known is never replaced (by ``*`` or by another number) without restarting the copy.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = [
    "BodyPlan",
    "ResponseRejected",
    "body_outcome",
    "parse_content_range",
    "plan_response",
]

_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$", re.IGNORECASE)
_DIGITS = re.compile(r"^\s*(\d{1,18})\s*$")
_ENCODINGS = {"gzip": "gzip", "x-gzip": "gzip", "deflate": "deflate"}


class ResponseRejected(Exception):
    """An answer the copy cannot use.

    :param reason: why (no URL in it).
    :param restart: ``True`` when starting the file again from byte 0 may help (the object changed, the
        server resumed elsewhere); ``False`` when the answer is unusable as such.
    """

    def __init__(self, reason: str, *, restart: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.restart = restart


@dataclass(frozen=True)
class BodyPlan:
    """What a usable answer promises.

    :param start: offset in the log of the first byte of the body.
    :param total: total size of the log the answer states, or ``None``.
    :param wire_length: bytes of body on the wire (``Content-Length``), or ``None`` (close-delimited).
    :param encoding: ``"gzip"``/``"deflate"`` for a content-encoded body, else ``None``.
    :param restart: the answer starts at byte 0 while the copy had bytes: throw them away first.
    """

    start: int
    total: int | None
    wire_length: int | None
    encoding: str | None
    restart: bool


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    return value if isinstance(value, str) else None


def _content_length(headers: Mapping[str, str]) -> int | None:
    value = _header(headers, "Content-Length")
    if value is None:
        return None
    m = _DIGITS.match(value)
    if not m:
        raise ResponseRejected(f"malformed Content-Length {value[:40]!r}", restart=False)
    return int(m.group(1))


def _encoding(headers: Mapping[str, str]) -> str | None:
    value = (_header(headers, "Content-Encoding") or "").strip().lower()
    if value in ("", "identity"):
        return None
    if value not in _ENCODINGS:
        raise ResponseRejected(f"unsupported Content-Encoding {value[:40]!r}", restart=False)
    return _ENCODINGS[value]


def parse_content_range(value: str | None) -> tuple[int, int, int | None]:
    """``(first, last, total)`` of a ``Content-Range: bytes first-last/total`` (``total`` None for ``*``).

    :raises ResponseRejected: missing, malformed or inconsistent.
    """
    m = _CONTENT_RANGE.match(value or "")
    if not m:
        raise ResponseRejected(f"206 without a valid Content-Range ({(value or '')[:60]!r})", restart=False)
    first, last = int(m.group(1)), int(m.group(2))
    total = None if m.group(3) == "*" else int(m.group(3))
    if last < first or (total is not None and last >= total):
        raise ResponseRejected(f"inconsistent Content-Range {value!r}", restart=False)
    return first, last, total


def plan_response(
    status: int, headers: Mapping[str, str], *, offset: int, known_total: int | None
) -> BodyPlan:
    """Check an answer to ``GET`` (with ``Range: bytes=offset-`` when ``offset`` > 0).

    :param status: HTTP status (2xx; the hook raised for the others).
    :param headers: response headers.
    :param offset: bytes the copy already holds.
    :param known_total: the total an earlier answer stated, if any.
    :raises ResponseRejected: the answer cannot be used (see its ``restart``).
    """
    encoding = _encoding(headers)
    length = _content_length(headers)
    if status == 200:
        total = length if encoding is None else None
        return BodyPlan(start=0, total=total, wire_length=length, encoding=encoding, restart=offset > 0)
    if status != 206:
        raise ResponseRejected(f"unexpected HTTP {status}", restart=False)
    if encoding is not None:
        raise ResponseRejected("a content-encoded 206 cannot be resumed", restart=False)
    first, last, total = parse_content_range(_header(headers, "Content-Range"))
    if length is not None and length != last - first + 1:
        raise ResponseRejected(
            f"Content-Length {length} disagrees with Content-Range bytes {first}-{last}", restart=False
        )
    if first != offset:
        raise ResponseRejected(f"the server resumed at byte {first}, not {offset}", restart=True)
    if known_total is not None and total != known_total:
        stated = "*" if total is None else str(total)
        raise ResponseRejected(f"the log size changed from {known_total} to {stated}", restart=True)
    return BodyPlan(start=first, total=total, wire_length=last - first + 1, encoding=None, restart=False)


def body_outcome(*, plan: BodyPlan, received: int, offset: int, stream_ended: bool) -> str:
    """What a body that was read to its end means for the copy.

    :param plan: the answer's plan.
    :param received: bytes of body read on the wire.
    :param offset: bytes of the log the copy holds now.
    :param stream_ended: for an encoded body, whether the compressed stream ended with a valid trailer.
    :returns: ``"complete"`` (the total is known and reached), ``"more"`` (resume at ``offset``),
        ``"probe"`` (the total is unknown: ask past the end), ``"short"`` (the body was cut short).
    :raises ResponseRejected: more bytes than promised.
    """
    if plan.wire_length is not None and received > plan.wire_length:
        raise ResponseRejected(
            f"received {received} bytes but Content-Length said {plan.wire_length}", restart=True
        )
    if plan.wire_length is not None and received < plan.wire_length:
        return "short"
    if plan.encoding is not None:
        return "complete" if stream_ended else "short"
    if plan.total is None:
        return "probe"
    if offset > plan.total:
        raise ResponseRejected(f"received {offset} bytes of a {plan.total}-byte log", restart=True)
    return "complete" if offset == plan.total else "more"
