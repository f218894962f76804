"""The one retry policy of every HTTP call: what is retried, how long to wait, how many times.

Transport errors, timeouts, 5xx and 429 are retried with exponential backoff and jitter, waiting at least
the server's ``Retry-After`` (capped); other 4xx never are.
"""

from __future__ import annotations

import logging
from typing import Any

import tenacity

from airflow_provider_modelarts.exceptions import ModelArtsApiError

__all__ = ["RETRY_AFTER_CAP", "RetryAfterWait", "is_retryable_error", "retry_policy"]

log = logging.getLogger(__name__)

RETRY_AFTER_CAP = 60.0
"""Longest wait (seconds) a ``Retry-After`` header can impose on one retry."""


def is_retryable_error(exc: BaseException) -> bool:
    """The one retry predicate: transport errors, timeouts, 5xx and 429; never other 4xx.

    :param exc: the error an attempt raised.
    """
    return isinstance(exc, ModelArtsApiError) and exc.is_retryable


class RetryAfterWait(tenacity.wait.wait_base):
    """Wait policy: exponential backoff with jitter, but at least the server's ``Retry-After`` (capped).

    :param fallback: the backoff used when there is no ``Retry-After``.
    :param cap: the longest ``Retry-After`` honoured, in seconds.
    """

    def __init__(
        self, fallback: tenacity.wait.wait_base | None = None, *, cap: float = RETRY_AFTER_CAP
    ) -> None:
        self.fallback = fallback or tenacity.wait_exponential_jitter(initial=1, max=30, jitter=1)
        self.cap = cap

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        base = float(self.fallback(retry_state))
        outcome = retry_state.outcome
        exc = outcome.exception() if outcome is not None and outcome.failed else None
        retry_after = getattr(exc, "retry_after", None)
        if retry_after is None:
            return base
        return max(base, min(float(retry_after), self.cap))


def _log_retry(retry_state: tenacity.RetryCallState) -> None:
    outcome = retry_state.outcome
    exc = outcome.exception() if outcome is not None else None
    sleep = retry_state.next_action.sleep if retry_state.next_action else 0.0
    log.warning(
        "ModelArts request failed (attempt %d): %s; retrying in %.1fs",
        retry_state.attempt_number,
        exc,
        sleep,
    )


def retry_policy(*, max_retries: int, wait: tenacity.wait.wait_base | None = None) -> dict[str, Any]:
    """Keyword arguments of ``tenacity.Retrying`` / ``tenacity.AsyncRetrying`` for this policy.

    :param max_retries: retries after the first attempt.
    :param wait: a wait strategy replacing :class:`RetryAfterWait` (e.g. ``tenacity.wait_none()`` in tests).
    """
    return dict(
        stop=tenacity.stop_after_attempt(max_retries + 1),
        wait=wait if wait is not None else RetryAfterWait(),
        retry=tenacity.retry_if_exception(is_retryable_error),
        before_sleep=_log_retry,
        reraise=True,
    )
