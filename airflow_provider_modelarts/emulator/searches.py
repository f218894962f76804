"""``POST /v2/{project_id}/training-job-searches`` for the emulator: filters, sorting and paging.

As documented (modelarts-api.md §3.2): ``offset`` is the page index, ``limit`` 1-50 (default 10),
``sort_by`` (default ``create_time``), ``order`` ``desc`` (default) or ``asc``, and ``filters`` of
``{key, operator: in|not|like|between, value: [str]}``. A scenario job with ``created_at`` (seconds
after the start) is neither listed nor found before then, so scenarios can add jobs over time.
Rows with equal sort keys are ordered by job id (the service's tie order is not documented).

Filters and sort keys are read from the emulated job directly; job bodies are built for the returned
page only, so a search over thousands of jobs stays cheap.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from airflow_provider_modelarts.emulator.scenario import EmulatedJob

__all__ = ["SearchRejected", "search_training_jobs", "visible"]

JobBody = Callable[[EmulatedJob, float], dict[str, Any]]
_OPERATORS = ("in", "not", "like", "between")


class SearchRejected(Exception):
    """The search body is invalid: answer ``status`` with ``error_code`` and ``error_msg``."""

    def __init__(self, error_msg: str, *, status: int = 400, error_code: str = "ModelArts.2788") -> None:
        super().__init__(error_msg)
        self.status = status
        self.error_code = error_code
        self.error_msg = error_msg


def _invalid(what: str) -> SearchRejected:
    return SearchRejected(f"InvalidParam({what})")


def visible(job: EmulatedJob, now: float) -> bool:
    """Whether the job exists yet at ``now`` (a scenario job's ``created_at`` has come)."""
    return now >= job.visible_from


@dataclass(frozen=True)
class _Filter:
    key: str
    operator: str
    values: tuple[str, ...]
    low: int = 0
    high: int = 0


def _field(job: EmulatedJob, key: str, now: float) -> Any:
    if key == "phase":
        return job.phase_at(now)
    if key == "name":
        return job.name
    if key == "create_time":
        return job.create_time_ms
    if key == "kind":
        return job.kind
    if key == "algorithm_name":
        return str(job.algorithm.get("name") or f"{job.name}-algorithm")
    return job.user_name


def _parse_filter(raw: Any) -> _Filter:
    if not isinstance(raw, dict):
        raise _invalid("filters")
    key, operator, values = raw.get("key"), raw.get("operator"), raw.get("value")
    if key not in ("phase", "name", "create_time", "kind", "algorithm_name", "user_name"):
        raise SearchRejected(f"InvalidParam(filters.key): unsupported key {key}")
    if operator not in _OPERATORS:
        raise SearchRejected(f"InvalidParam(filters.operator): unsupported operator {operator}")
    if not isinstance(values, list):
        raise SearchRejected("InvalidParam(filters.value): must be a list of strings")
    if operator != "between":
        return _Filter(key, operator, tuple(str(v) for v in values))
    try:
        low, high = (int(v) for v in values)
    except (TypeError, ValueError):
        raise SearchRejected("InvalidParam(filters): between needs two integers") from None
    return _Filter(key, operator, (), low, high)


def _matches(flt: _Filter, job: EmulatedJob, now: float) -> bool:
    actual = _field(job, flt.key, now)
    if flt.operator == "in":
        return str(actual) in flt.values
    if flt.operator == "not":
        return str(actual) not in flt.values
    if flt.operator == "like":
        return any(v.lower() in str(actual).lower() for v in flt.values)
    return isinstance(actual, int) and flt.low <= actual <= flt.high


def _paging(doc: dict[str, Any]) -> tuple[int, int, str, str]:
    offset = doc.get("offset", 0)
    limit = doc.get("limit", 10)
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise SearchRejected("InvalidParam(offset): must be an integer >= 0")
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 50:
        raise SearchRejected("InvalidParam(limit): must be an integer from 1 to 50")
    sort_by = str(doc.get("sort_by") or "create_time")
    order = str(doc.get("order") or "desc")
    if order not in ("asc", "desc"):
        raise SearchRejected("InvalidParam(order): must be asc or desc")
    if sort_by not in ("create_time", "name", "duration", "phase"):
        raise SearchRejected(f"InvalidParam(sort_by): unsupported value {sort_by}")
    return offset, limit, sort_by, order


def _sort(
    jobs: list[EmulatedJob], sort_by: str, order: str, now: float, job_body: JobBody
) -> list[EmulatedJob]:
    keys: dict[str, Callable[[EmulatedJob], Any]] = {
        "create_time": lambda job: job.create_time_ms,
        "name": lambda job: job.name,
        "phase": lambda job: job.phase_at(now),
        "duration": lambda job: job_body(job, now)["status"]["duration"],
    }
    key = keys[sort_by]
    jobs = sorted(jobs, key=lambda job: job.id, reverse=order == "desc")
    return sorted(jobs, key=key, reverse=order == "desc")


def search_training_jobs(body: bytes, jobs: Iterable[EmulatedJob], *, now: float, job_body: JobBody) -> dict:
    """Answer one search request.

    :param body: the raw request body.
    :param jobs: every emulated job.
    :param now: the emulator's clock (unix seconds).
    :param job_body: builds the details body of a job at a time.
    :raises SearchRejected: the body is not valid.
    """
    try:
        doc = json.loads(body or b"{}")
    except ValueError:
        raise SearchRejected("InvalidJsonBody", error_code="ModelArts.2787") from None
    if not isinstance(doc, dict):
        raise SearchRejected("InvalidJsonBody", error_code="ModelArts.2787")
    offset, limit, sort_by, order = _paging(doc)
    raw_filters = doc.get("filters") or []
    if not isinstance(raw_filters, list):
        raise _invalid("filters")
    filters = [_parse_filter(raw) for raw in raw_filters]
    rows = [job for job in jobs if visible(job, now) and all(_matches(f, job, now) for f in filters)]
    rows = _sort(rows, sort_by, order, now, job_body)
    page = rows[offset * limit : (offset + 1) * limit]
    return {
        "total": len(rows),
        "count": len(page),
        "limit": limit,
        "offset": offset,
        "sort_by": sort_by,
        "order": order,
        "group_by": str(doc.get("group_by") or ""),
        "workspace_id": str(doc.get("workspace_id") or "0"),
        "ai_project": "default-ai-project",
        "items": [job_body(job, now) for job in page],
    }
