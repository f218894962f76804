"""State shared by the parts of the emulator: fault knobs, request counters, its jobs and its clock."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from airflow_provider_modelarts.emulator.jobs import JobTable

__all__ = ["COUNTER_KINDS", "Counters", "EmulatorContext", "Knobs"]

COUNTER_KINDS = (
    "job",
    "search",
    "log_url",
    "preview",
    "tasks",
    "actions",
    "events",
    "iam_token",
    "obs_get",
    "rejected_auth",
    "throttled",
    "server_error",
    "outside_project",
    "not_found",
    "dropped",
    "bytes_served",
)


@dataclass
class Knobs:
    """Fault injection settings, read on every request; change them at any time.

    :param link_ttl: lifetime in seconds of new OBS links (``Expires = now + link_ttl``).
    :param drop_after_bytes: close the socket after this many body bytes of an OBS download.
    :param drop_downloads: how many OBS downloads are cut (counts down); needs ``drop_after_bytes``.
        A download no longer than ``drop_after_bytes`` is sent whole and does not count.
    :param throttle_ratio: share (0..1) of ModelArts API calls answered 429 ``APIG.0308``; deterministic
        (every ``1/ratio``-th call), not random.
    :param retry_after: value of the ``Retry-After`` header on 429 answers; None sends no header.
    :param error_burst: the next N ModelArts API calls get ``error_status``.
    :param error_status: HTTP status of the burst errors (500 ``ModelArts.0010``, or 502/503/504 ``APIG.0203``).
    :param expire_token_once: the next token-authenticated API call gets 401 ``APIG.0301`` "token expires"
        and the token stops being valid.
    :param latency: seconds added before answering each ModelArts API call.
    :param ignore_range: answer Range requests with 200 and the whole object.
    :param invalid_range_whole_object: answer a Range that cannot be satisfied (one starting at or past the
        end of the object) with 200 and the whole object, as the OBS guides say OBS does, instead of 416.
    :param refuse_log_url: answer ``/logs/url`` with 403 ``ModelArts.0108`` (the identity lacks
        ``modelarts:trainJob:logExport``), as for a read-only user.
    """

    link_ttl: float = 300
    drop_after_bytes: int | None = None
    drop_downloads: int = 0
    throttle_ratio: float = 0.0
    retry_after: float | None = 1
    error_burst: int = 0
    error_status: int = 500
    expire_token_once: bool = False
    latency: float = 0.0
    ignore_range: bool = False
    invalid_range_whole_object: bool = False
    refuse_log_url: bool = False


class Counters(Mapping[str, int]):
    """Request counts by kind plus ``bytes_served``; missing kinds read as 0."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._data: dict[str, int] = dict.fromkeys(COUNTER_KINDS, 0)

    def add(self, kind: str, amount: int = 1) -> None:
        """Increase a counter.

        :param kind: counter name.
        :param amount: increment.
        """
        with self._lock:
            self._data[kind] = self._data.get(kind, 0) + amount

    def reset(self) -> None:
        """Set every counter back to 0."""
        with self._lock:
            self._data = dict.fromkeys(COUNTER_KINDS, 0)

    def snapshot(self) -> dict[str, int]:
        """A consistent copy of all counters."""
        with self._lock:
            return dict(self._data)

    def __getitem__(self, kind: str) -> int:
        with self._lock:
            return self._data.get(kind, 0)

    def __iter__(self) -> Iterator[str]:
        return iter(self.snapshot())

    def __len__(self) -> int:
        with self._lock:
            return len(self._data)

    def __repr__(self) -> str:
        return f"Counters({self.snapshot()!r})"


@dataclass(frozen=True)
class EmulatorContext:
    """What the emulator's request handlers share.

    :param jobs: the jobs served.
    :param knobs: fault knobs.
    :param counters: request counters.
    :param clock: the emulator's clock (unix seconds).
    :param base_url: returns the emulator's base URL.
    """

    jobs: JobTable
    knobs: Knobs
    counters: Counters
    clock: Callable[[], float]
    base_url: Callable[[], str]
