"""Client-side pacing of ModelArts API calls: one adaptive limiter per (endpoint, credential) and process.

Every hook of a process that talks to the same endpoint with the same credential (threads of an archive,
the async hook, all triggers of a triggerer) takes its turn from the same :class:`AdaptiveRateLimiter`.
The limiter hands out evenly spaced send times (no bursts), so calls never go out faster than the rate it
currently allows. The rate adapts like botocore's "adaptive" retry mode: a ``429`` halves it (down to a
floor), each success raises it again by a fixed step until it is back at the configured rate.

Turning it on: the connection extra ``requests_per_second`` (default: unset, no pacing). It paces one
process; across processes (mapped tasks on several workers) use an Airflow pool as well.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

__all__ = [
    "AdaptiveRateLimiter",
    "LimiterKey",
    "get_rate_limiter",
    "reset_rate_limiters",
]

DECREASE_FACTOR = 0.5
"""Share of the current rate kept after a 429."""
RECOVERY_SUCCESSES = 10
"""Successes that bring the rate back from zero to the configured rate (the step is ``rate / 10``)."""
MIN_RATE = 0.5
"""Lowest rate (requests per second) a run of 429s can bring the limiter down to."""


@dataclass(frozen=True)
class LimiterKey:
    """What one limiter is shared by: the ModelArts endpoint and the credential (AK or IAM user).

    :param endpoint: ``scheme://host[:port]``.
    :param credential: ``ak:<access key>`` or ``user:<domain>/<user>``; never a secret.
    """

    endpoint: str
    credential: str


class AdaptiveRateLimiter:
    """Evenly spaced send slots at an adaptive rate; shared by threads and event loops.

    :param rate: the configured (highest) rate, requests per second, > 0.
    :param clock: monotonic seconds (default ``time.monotonic``).
    :param sleep: blocking sleep used by :meth:`acquire` (default ``time.sleep``).
    :param asleep: non-blocking sleep used by :meth:`aacquire` (default ``asyncio.sleep``).
    """

    def __init__(
        self,
        rate: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        asleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._clock = clock
        self._sleep = sleep
        self._asleep = asleep
        self._lock = threading.Lock()
        self._max_rate = self._checked(rate)
        self._rate = self._max_rate
        self._next_slot = float("-inf")
        self.throttled = 0

    @staticmethod
    def _checked(rate: float) -> float:
        if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0 < rate < float("inf"):
            raise ValueError(f"rate must be a number of requests per second > 0, got {rate!r}")
        return float(rate)

    @property
    def max_rate(self) -> float:
        """The configured rate."""
        return self._max_rate

    @property
    def rate(self) -> float:
        """The rate allowed now (lower than :attr:`max_rate` after 429s)."""
        with self._lock:
            return self._rate

    def set_max_rate(self, rate: float) -> None:
        """Change the configured rate (the most recent connection read wins).

        :param rate: requests per second, > 0.
        """
        rate = self._checked(rate)
        with self._lock:
            slowed_down = self._rate < self._max_rate
            self._max_rate = rate
            self._rate = min(self._rate, rate) if slowed_down else rate

    def reserve(self) -> float:
        """Take the next send slot; return how many seconds to wait for it (0 if it is now)."""
        with self._lock:
            now = self._clock()
            slot = max(now, self._next_slot)
            self._next_slot = slot + 1.0 / self._rate
            return slot - now

    def acquire(self) -> None:
        """Block the calling thread until its send slot."""
        wait = self.reserve()
        if wait > 0:
            self._sleep(wait)

    async def aacquire(self) -> None:
        """Wait for a send slot without blocking the event loop."""
        wait = self.reserve()
        if wait > 0:
            await self._asleep(wait)

    def record(self, status_code: int) -> None:
        """Adapt to an answer: a 429 lowers the rate, a success raises it toward :attr:`max_rate`.

        :param status_code: the HTTP status of the answer.
        """
        with self._lock:
            if status_code == 429:
                self.throttled += 1
                self._rate = max(min(MIN_RATE, self._max_rate), self._rate * DECREASE_FACTOR)
                # Slots already handed out keep their times; the ones after them follow the new spacing.
                self._next_slot = max(self._next_slot, self._clock()) + 1.0 / self._rate
            elif 200 <= status_code < 300:
                self._rate = min(self._max_rate, self._rate + self._max_rate / RECOVERY_SUCCESSES)


_registry_lock = threading.Lock()
_limiters: dict[LimiterKey, AdaptiveRateLimiter] = {}


def get_rate_limiter(key: LimiterKey, rate: float) -> AdaptiveRateLimiter:
    """The process-wide limiter of ``key``, created on first use; its configured rate becomes ``rate``.

    :param key: endpoint and credential.
    :param rate: requests per second from the connection, > 0.
    """
    with _registry_lock:
        limiter = _limiters.get(key)
        if limiter is None:
            limiter = _limiters[key] = AdaptiveRateLimiter(rate)
            return limiter
    limiter.set_max_rate(rate)
    return limiter


def reset_rate_limiters() -> None:
    """Forget every limiter (tests; a process that changes connections wholesale)."""
    with _registry_lock:
        _limiters.clear()
