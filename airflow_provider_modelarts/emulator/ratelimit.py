"""The API gateway's per-credential rate limit, as the emulator enforces it (``--rate-limit N[/s|/min]``).

One token bucket per credential (access key, or IAM user of a token): it holds at most ``N`` requests and
refills at ``N`` per period. A request that finds the bucket empty is answered like APIG does: ``429`` with
``APIG.0308`` "The throttling threshold has been reached: policy user over ratelimit,limit:N,time:1 second"
(or ``1 minute``) and no ``Retry-After``.
"""

from __future__ import annotations

import re
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass

__all__ = ["THROTTLE_CODE", "RateLimit", "RateLimitEvent", "RateLimiter", "credential_of", "parse_rate_limit"]

THROTTLE_CODE = "APIG.0308"
_PERIODS = {"": 1.0, "s": 1.0, "sec": 1.0, "second": 1.0, "min": 60.0, "minute": 60.0}
_SPEC_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(?:/\s*([a-z]+))?\s*$", re.IGNORECASE)
EVENT_LOG_SIZE = 100_000
_ACCESS_RE = re.compile(r"Access=([^,\s]+)")


@dataclass(frozen=True)
class RateLimit:
    """``limit`` requests per ``period`` seconds (1 or 60).

    :param limit: requests allowed per period (also the bucket size).
    :param period: 1.0 (per second) or 60.0 (per minute).
    """

    limit: float
    period: float

    @property
    def rate(self) -> float:
        """Requests per second."""
        return self.limit / self.period

    def message(self) -> str:
        """The gateway's error message for this limit."""
        unit = "second" if self.period == 1.0 else "minute"
        return f"The throttling threshold has been reached: policy user over ratelimit,limit:{self.limit:g},time:1 {unit}"


def parse_rate_limit(spec: str) -> RateLimit:
    """Parse ``N``, ``N/s`` or ``N/min`` (``N`` > 0; a plain number is per second).

    :param spec: the text of ``--rate-limit``.
    :raises ValueError: for anything else.
    """
    match = _SPEC_RE.match(spec or "")
    period = _PERIODS.get((match.group(2) or "").lower()) if match else None
    if match is None or period is None:
        raise ValueError(f"rate limit must look like 20, 20/s or 600/min, got {spec!r}")
    limit = float(match.group(1))
    if not limit > 0:
        raise ValueError(f"rate limit must be > 0, got {spec!r}")
    return RateLimit(limit=limit, period=period)


@dataclass(frozen=True)
class RateLimitEvent:
    """One request seen by the limiter: when (limiter clock), whose, and whether it was let through."""

    at: float
    credential: str
    allowed: bool


class RateLimiter:
    """Token buckets by credential; thread-safe.

    :param limit: the limit.
    :param clock: monotonic seconds (``time.monotonic`` by default; tests pass a fake one).
    """

    def __init__(self, limit: RateLimit, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self._clock = clock
        self._lock = threading.Lock()
        self._buckets: dict[str, tuple[float, float]] = {}
        self.events: deque[RateLimitEvent] = deque(maxlen=EVENT_LOG_SIZE)

    def allow(self, credential: str) -> bool:
        """Take one token from ``credential``'s bucket; ``False`` when it is empty (answer 429).

        :param credential: the access key or the IAM user the request authenticated as.
        """
        with self._lock:
            now = self._clock()
            tokens, last = self._buckets.get(credential, (self.limit.limit, now))
            tokens = min(self.limit.limit, tokens + (now - last) * self.limit.rate)
            allowed = tokens >= 1.0
            if allowed:
                tokens -= 1.0
            self._buckets[credential] = (tokens, now)
            self.events.append(RateLimitEvent(at=now, credential=credential, allowed=allowed))
            return allowed

    def allowed_times(self, credential: str | None = None) -> list[float]:
        """When requests were let through (optionally of one credential), oldest first.

        :param credential: only this credential's requests.
        """
        with self._lock:
            return [
                e.at for e in self.events if e.allowed and (credential is None or e.credential == credential)
            ]

    def rejected(self) -> int:
        """How many requests were answered 429 (within the event log)."""
        with self._lock:
            return sum(1 for e in self.events if not e.allowed)


def credential_of(headers: Mapping[str, str], *, token_user: str) -> str:
    """Whose request this is: ``ak:<access key>`` (AK/SK signature) or ``user:<name>`` (IAM token).

    :param headers: the request headers, names lower-case (already authenticated).
    :param token_user: the IAM user the emulator issues tokens to.
    """
    if "x-auth-token" in headers:
        return f"user:{token_user}"
    match = _ACCESS_RE.search(headers.get("authorization", ""))
    return f"ak:{match.group(1)}" if match else "anonymous"
