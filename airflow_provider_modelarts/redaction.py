"""Keeping the signatures of pre-signed log links out of logs at a constant cost per link.

Airflow's secret masker (3.1 to 3.3) recompiles one regular expression over every secret registered so far
each time a new one is added, and in a task process it also sends each secret to the supervisor, which does
the same. Registering every link of a 1,000-task archive therefore makes each log slower than the one before.
This module keeps that cost flat:

* a link is registered at most once per process (:func:`mask_signed_url` remembers the links it has seen, so
  fetching a link and then opening it costs one registration, not two);
* links that never leave the provider (the archive workers' links, see :func:`mark_link_private`) are not
  registered at all: they are only logged with their query stripped, ``urllib3``'s request lines are
  redacted by parameter name (:class:`SignedUrlLogFilter`), and transport errors that quote
  them are scrubbed (:func:`scrub_exception_chain`).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import threading
from collections import OrderedDict
from collections.abc import Callable
from urllib.parse import quote, unquote, urlsplit

from airflow.providers.common.compat.sdk import mask_secret

__all__ = [
    "LINKS",
    "SIGNED_URL_SECRET_PARAMS",
    "LinkRegistry",
    "SignedUrlLogFilter",
    "install_urllib3_log_filter",
    "mark_link_private",
    "mask_signed_url",
    "redact_signed_url_secrets",
    "redact_url",
    "scrub_exception_chain",
    "signed_url_secrets",
]

SIGNED_URL_SECRET_PARAMS = frozenset(
    {"signature", "x-obs-security-token", "x-amz-security-token", "x-amz-signature"}
)
"""Query parameters of a pre-signed OBS/S3 URL whose values are secret (compared lower-case)."""

DEFAULT_CAPACITY = 65_536
"""Links remembered per process; a link lives minutes, so older ones are forgotten first."""


def signed_url_secrets(url: str) -> list[str]:
    """The secret parts of a pre-signed OBS URL in every form a log line may show.

    ``Signature``, ``X-Amz-Signature`` and ``x-obs-security-token``/``x-amz-security-token`` values, raw
    (as they appear in the URL), decoded and URL-encoded.

    :param url: the signed URL.
    """
    secrets: list[str] = []
    for raw_pair in urlsplit(url).query.split("&"):
        name, sep, raw_value = raw_pair.partition("=")
        if not sep or unquote(name).lower() not in SIGNED_URL_SECRET_PARAMS or not raw_value:
            continue
        decoded = unquote(raw_value.replace("+", " "))
        for form in (
            raw_value,
            unquote(raw_value),
            decoded,
            quote(decoded, safe=""),
            quote(decoded, safe="~"),
        ):
            if form and form not in secrets:
                secrets.append(form)
    return secrets


class LinkRegistry:
    """The pre-signed links this process has already dealt with (registered or kept private).

    Remembers a digest of each link's secrets, never the secrets; bounded (least recently seen forgotten
    first); thread-safe; forgets everything in a forked child, whose masker may have been reset.

    :param capacity: how many links to remember.
    """

    def __init__(self, *, capacity: int = DEFAULT_CAPACITY) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self._capacity = capacity
        self._lock = threading.Lock()
        self._seen: OrderedDict[bytes, None] = OrderedDict()
        self._pid = os.getpid()

    @staticmethod
    def _key(secrets: list[str]) -> bytes:
        return hashlib.blake2b("\n".join(secrets).encode("utf-8"), digest_size=16).digest()

    def claim(self, secrets: list[str]) -> bool:
        """Record a link by its secrets; ``True`` the first time, ``False`` if already dealt with.

        :param secrets: the link's secrets (:func:`signed_url_secrets`).
        """
        if not secrets:
            return False
        key = self._key(secrets)
        with self._lock:
            if self._pid != os.getpid():
                self._seen.clear()
                self._pid = os.getpid()
            if key in self._seen:
                self._seen.move_to_end(key)
                return False
            self._seen[key] = None
            if len(self._seen) > self._capacity:
                self._seen.popitem(last=False)
            return True

    def __len__(self) -> int:
        with self._lock:
            return len(self._seen)

    def clear(self) -> None:
        """Forget every link."""
        with self._lock:
            self._seen.clear()


LINKS = LinkRegistry()
"""The process-wide registry used by :func:`mask_signed_url` and :func:`mark_link_private`."""


def mask_signed_url(
    url: str, mask: Callable[[str], None] | None = None, *, registry: LinkRegistry | None = None
) -> int:
    """Register the secret parts of a pre-signed URL with the masker, once per link and process.

    A link already registered, or marked private with :func:`mark_link_private`, costs one dictionary
    look-up. Returns how many secrets were registered now.

    :param url: the signed URL.
    :param mask: registers one secret (default ``mask_secret``).
    :param registry: where seen links are remembered (default :data:`LINKS`).
    """
    secrets = signed_url_secrets(url)
    if not (LINKS if registry is None else registry).claim(secrets):
        return 0
    register = mask or mask_secret
    for secret in secrets:
        register(secret)
    return len(secrets)


def mark_link_private(url: str, *, registry: LinkRegistry | None = None) -> None:
    """Record a link that never reaches a log line, an exception text or XCom, without registering it.

    Later :func:`mask_signed_url` calls for the same link (e.g. when it is opened) do nothing.

    :param url: the signed URL.
    :param registry: where seen links are remembered (default :data:`LINKS`).
    """
    (LINKS if registry is None else registry).claim(signed_url_secrets(url))


def scrub_exception_chain(err: BaseException, redact: Callable[[str], str]) -> None:
    """Rewrite, in place, the messages of ``err`` and of its causes and contexts with ``redact``.

    Transport errors quote the request URL (``Max retries exceeded with url: /key?...&Signature=...``);
    a traceback prints every exception of the chain, so each one is rewritten.

    :param err: the exception.
    :param redact: returns a message with the secrets replaced.
    """
    seen: set[int] = set()
    pending: list[BaseException | None] = [err]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        texts = [str(arg) for arg in current.args]
        redacted = [redact(text) for text in texts]
        if redacted != texts:
            current.args = tuple(redacted)
        pending += [current.__cause__, current.__context__]


def redact_url(url: str) -> str:
    """``url`` without its query string, safe to log.

    :param url: any URL.
    """
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}" + ("?..." if parts.query else "")


_SECRET_PARAM_NAMES_RE = "|".join(map(re.escape, sorted(SIGNED_URL_SECRET_PARAMS)))
_SECRET_PARAM_VALUE_RE = re.compile(rf"(?<=[?&])((?:{_SECRET_PARAM_NAMES_RE})=)[^&#\s\"'<>]*", re.IGNORECASE)


def redact_signed_url_secrets(text: str) -> str:
    """``text`` with the values of the secret query parameters of any signed URL in it replaced by ``***``.

    The parameters are those :func:`signed_url_secrets` finds (``Signature``, ``X-Amz-Signature`` and the
    security tokens); the rest of the URL (path, ``AccessKeyId``, ``Expires``) stays readable.

    :param text: a log message, a URL or a request target like ``/bucket/key?...``.
    """
    return _SECRET_PARAM_VALUE_RE.sub(r"\1***", text)


class SignedUrlLogFilter(logging.Filter):
    """Redact signed-URL secrets from the records of ``urllib3``, which logs every request target at DEBUG.

    Airflow's secret masker only covers Airflow's own task-log handlers; this filter keeps a log link's
    signature out of any other handler (a console at DEBUG, a library user's own logging setup).
    """

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:
            return True
        redacted = redact_signed_url_secrets(message)
        if redacted != message:
            record.msg, record.args = redacted, ()
        return True


_URLLIB3_LOGGERS = ("urllib3.connectionpool", "urllib3.util.retry", "urllib3.poolmanager")


_filter_lock = threading.Lock()


def install_urllib3_log_filter() -> None:
    """Add :class:`SignedUrlLogFilter` to the ``urllib3`` loggers that name request URLs (idempotent).

    Called by the hooks when they are first used, never at import.
    """
    with _filter_lock:
        _add_filters()


def _add_filters() -> None:
    for name in _URLLIB3_LOGGERS:
        logger = logging.getLogger(name)
        if not any(type(f).__name__ == SignedUrlLogFilter.__name__ for f in logger.filters):
            logger.addFilter(SignedUrlLogFilter())
