"""Answers of ModelArts, IAM and OBS checked and turned into the values the hooks return.

Every function here is pure: it gets a parsed answer and raises
:class:`~airflow_provider_modelarts.exceptions.ModelArtsResponseError` when the answer is not what the
API promises.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from airflow.providers.common.compat.sdk import mask_secret

from airflow_provider_modelarts.api_errors import header
from airflow_provider_modelarts.auth import IamToken, TokenResponseError, parse_token_response
from airflow_provider_modelarts.exceptions import ModelArtsResponseError
from airflow_provider_modelarts.hooks.calls import ApiCall, absolute_http_url
from airflow_provider_modelarts.redaction import mark_link_private, mask_signed_url

__all__ = [
    "DEFAULT_LOG_LINK_TTL",
    "content_range",
    "event_list",
    "expect_dict",
    "int_header",
    "job_matches",
    "json_answer",
    "log_url_expires_at",
    "log_url_from",
    "parse_token",
    "preview_from",
    "range_total",
    "task_list",
    "whole_object_ends_by",
]

DEFAULT_LOG_LINK_TTL = 300
"""Seconds a log link is assumed to live when it carries no expiry."""
_CONTENT_RANGE_RE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")


def _bad_answer(call: ApiCall, status: int, what: str) -> ModelArtsResponseError:
    return ModelArtsResponseError(
        f"ModelArts {call.method} {call.path} answered {what}",
        status_code=status,
        method=call.method,
        path=call.path,
    )


def log_url_expires_at(url: str, *, default_ttl: int = DEFAULT_LOG_LINK_TTL) -> datetime:
    """When a pre-signed link expires: its ``Expires`` (V2) or ``X-Amz-Date`` + ``X-Amz-Expires`` (V4).

    :param url: the link.
    :param default_ttl: seconds from now assumed when the link says nothing.
    """
    params = {k.lower(): v for k, v in parse_qsl(urlsplit(url).query, keep_blank_values=True)}
    try:
        if params.get("expires"):
            return datetime.fromtimestamp(int(params["expires"]), tz=timezone.utc)
        if params.get("x-amz-date") and params.get("x-amz-expires"):
            start = datetime.strptime(params["x-amz-date"], "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc)
            return start + timedelta(seconds=int(params["x-amz-expires"]))
    except (ValueError, OverflowError, OSError):
        pass
    return datetime.now(timezone.utc) + timedelta(seconds=default_ttl)


def _validate_http_url(
    url: Any, *, what: str, status_code: int | None = None, request_id: str | None = None
) -> str:
    valid = absolute_http_url(url)
    if valid is not None:
        return valid
    raise ModelArtsResponseError(
        f"{what} is not an absolute http(s) URL",
        status_code=status_code,
        request_id=request_id,
    )


def parse_token(
    status: int, headers: Mapping[str, str], body: bytes, mask: Callable[[str], None] | None = None
) -> IamToken:
    """The IAM token of a token answer, registered with the masker (``mask``, default ``mask_secret``)."""
    try:
        token = parse_token_response(headers, body)
    except TokenResponseError as err:
        raise ModelArtsResponseError(
            f"IAM token request answered HTTP {status} but {err}",
            status_code=status,
            request_id=header(headers, "X-Request-Id"),
        ) from err
    (mask or mask_secret)(token.token)
    return token


def json_answer(call: ApiCall, status: int, headers: Mapping[str, str], body: bytes) -> Any:
    """The parsed JSON body of a 2xx answer; :class:`ModelArtsResponseError` if it is not JSON."""
    try:
        return json.loads(body)
    except ValueError:
        raise ModelArtsResponseError(
            f"ModelArts {call.method} {call.path} answered HTTP {status} with a body that is not JSON",
            status_code=status,
            request_id=header(headers, "X-Request-Id"),
            method=call.method,
            path=call.path,
        ) from None


def expect_dict(call: ApiCall, payload: Any, status: int) -> dict[str, Any]:
    """``payload`` if it is a JSON object; :class:`ModelArtsResponseError` otherwise."""
    if not isinstance(payload, dict):
        raise ModelArtsResponseError(
            f"ModelArts {call.method} {call.path} answered with a JSON {type(payload).__name__}, "
            "expected an object",
            status_code=status,
            method=call.method,
            path=call.path,
        )
    return payload


def log_url_from(
    call: ApiCall,
    payload: Any,
    status: int,
    request_id: str | None,
    mask: Callable[[str], None] | None = None,
    *,
    register: bool = True,
) -> str:
    """The ``obs_url`` of a ``/logs/url`` answer, checked and masked (or marked private)."""
    if not isinstance(payload, dict) or "obs_url" not in payload:
        raise ModelArtsResponseError(
            f"ModelArts {call.method} {call.path} answered without obs_url",
            status_code=status,
            request_id=request_id,
            method=call.method,
            path=call.path,
        )
    url = _validate_http_url(payload["obs_url"], what="obs_url", status_code=status, request_id=request_id)
    if register:
        mask_signed_url(url, mask)
    else:
        mark_link_private(url)
    return url


def preview_from(call: ApiCall, payload: Any, status: int) -> dict[str, Any]:
    """``{"content", "current_size", "full_size"}`` of a ``/logs/preview`` answer."""
    content = payload.get("content", payload.get("context")) if isinstance(payload, dict) else None
    if not isinstance(content, str):
        raise _bad_answer(call, status, "without a text 'content'")
    size = len(content.encode("utf-8"))

    def as_int(key: str, default: int) -> int:
        value = payload.get(key)
        return value if isinstance(value, int) and not isinstance(value, bool) else default

    current = as_int("current_size", size)
    return {"content": content, "current_size": current, "full_size": as_int("full_size", current)}


def job_matches(
    job: Any, phases: list[str] | None, created_after_ms: int | None, created_before_ms: int | None
) -> bool:
    """Whether a listed job passes the phase and creation-time filters (the server may ignore them)."""
    if not isinstance(job, dict):
        return False
    if phases and str((job.get("status") or {}).get("phase")) not in {str(p) for p in phases}:
        return False
    created = (job.get("metadata") or {}).get("create_time")
    if isinstance(created, int | float):
        if created_after_ms is not None and created < created_after_ms:
            return False
        if created_before_ms is not None and created > created_before_ms:
            return False
    return True


def int_header(value: str | None) -> int | None:
    """A header value as an int, or None when absent or not a number."""
    return int(value) if value is not None and value.strip().isdigit() else None


def content_range(status: int, value: str | None) -> tuple[int | None, int | None]:
    """``(first byte, total size)`` of a 206 answer; ``(None, None)`` for a whole-object 200."""
    match = _CONTENT_RANGE_RE.fullmatch((value or "").strip()) if status == 206 else None
    if match is None:
        return None, None
    total = match.group(3)
    return int(match.group(1)), (int(total) if total != "*" else None)


def whole_object_ends_by(status: int, headers: Mapping[str, str], start: int) -> int | None:
    """The object's size when a whole-object answer to a ranged read cannot reach byte ``start``.

    OBS answers an invalid range (e.g. one starting at or past the end of the object) with 200 and the
    whole object instead of 416. When such an answer's ``Content-Length`` is at most ``start``, nothing
    from ``start`` on is in its body, so the body need not be read. None when the body must be read: a
    206, no usable ``Content-Length``, or an encoded body (its length is not the object's).

    :param status: the HTTP status of the answer.
    :param headers: the answer's headers.
    :param start: the first byte wanted.
    """
    if status != 200 or (header(headers, "Content-Encoding") or "identity").strip().lower() != "identity":
        return None
    size = int_header(header(headers, "Content-Length"))
    return size if size is not None and size <= start else None


def range_total(headers: Mapping[str, str], data: bytes, wanted: int) -> int | None:
    """The object size of a whole-object answer of which the first ``wanted`` bytes were read as ``data``.

    Its ``Content-Length``; without one, ``len(data)`` when the body ended before ``wanted`` bytes; else
    None (unknown).

    :param headers: the answer's headers.
    :param data: the bytes read.
    :param wanted: the most bytes that were read.
    """
    size = int_header(header(headers, "Content-Length"))
    if size is None and len(data) < wanted:
        return len(data)
    return size


def event_list(call: ApiCall, payload: Any, status: int) -> list[dict]:
    """``[{"message", "level", "time", "source"}]`` of an events answer."""
    events = payload.get("events") if isinstance(payload, dict) else None
    if not isinstance(events, list):
        raise _bad_answer(call, status, "without an events list")
    return [
        {k: str(e.get(k) or "") for k in ("message", "level", "time", "source")}
        for e in events
        if isinstance(e, dict)
    ]


def task_list(call: ApiCall, payload: Any, status: int) -> list[dict]:
    """The task dicts of a tasks answer (a list, or an object with ``tasks`` or ``items``)."""
    if isinstance(payload, dict):
        for key in ("tasks", "items"):
            if isinstance(payload.get(key), list):
                payload = payload[key]
                break
    if not isinstance(payload, list):
        raise _bad_answer(call, status, "without a task list")
    return [task for task in payload if isinstance(task, dict)]
