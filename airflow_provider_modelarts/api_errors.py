"""Error answers of ModelArts, IAM and OBS turned into typed exceptions, and ``Retry-After`` parsing.

The exception classes live in :mod:`airflow_provider_modelarts.exceptions`; this module only decides which
one an answer deserves and fills in its ``error_code``, ``error_msg`` and request id.
"""

from __future__ import annotations

import json
import time
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from datetime import timezone
from email.utils import parsedate_to_datetime
from typing import Any

from airflow_provider_modelarts.exceptions import (
    ModelArtsApiError,
    ModelArtsAuthError,
    ModelArtsError,
    ModelArtsLogLinkExpiredError,
    ModelArtsNotFoundError,
)

__all__ = ["build_api_error", "header", "parse_retry_after"]

_ERROR_TEXT_LIMIT = 500


def _error_fields_from_json(payload: Any) -> tuple[str | None, str | None]:
    """``(error_code, error_msg)`` the way huaweicloudsdkcore reads them, searching nested objects too."""
    if not isinstance(payload, dict):
        return None, None
    for code_key, msg_key in (("error_code", "error_msg"), ("errorCode", "errorMsg"), ("code", "message")):
        if code_key in payload or msg_key in payload:
            code, msg = payload.get(code_key), payload.get(msg_key)
            return (str(code) if code is not None else None, str(msg) if msg is not None else None)
    for value in payload.values():
        if isinstance(value, dict):
            code, msg = _error_fields_from_json(value)
            if code is not None or msg is not None:
                return code, msg
    return None, None


def _error_fields_from_xml(text: str) -> tuple[str | None, str | None, str | None]:
    try:
        root = ET.fromstring(text)
    except ET.ParseError:
        return None, None, None

    def find(tag: str) -> str | None:
        node = root.find(tag)
        return node.text.strip() if node is not None and node.text else None

    return find("Code"), find("Message"), find("RequestId")


def header(headers: Mapping[str, str], name: str) -> str | None:
    """The value of header ``name`` (as given, else lower-case), or None.

    :param headers: the headers.
    :param name: the header name.
    """
    value = headers.get(name)
    if value is None:
        value = headers.get(name.lower())
    return value


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta seconds or HTTP date); ``None`` if absent/bad.

    :param value: the header value.
    :param now: current epoch seconds (for HTTP dates).
    """
    if not value:
        return None
    text = value.strip()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def build_api_error(
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    *,
    method: str,
    path: str,
    training_job_id: str | None = None,
    error_kind: str = "api",
) -> ModelArtsError:
    """Turn an error answer into the right :class:`ModelArtsApiError` subclass; never raises itself.

    An expired pre-signed link gives :class:`ModelArtsLogLinkExpiredError` instead.

    :param status: HTTP status.
    :param headers: response headers.
    :param body: (the start of) the response body.
    :param method: request method, for the message.
    :param path: request path without query, for the message.
    :param training_job_id: the job the request was about, named in not-found errors.
    :param error_kind: ``api`` for ModelArts JSON errors, ``iam`` for IAM token errors, ``obs`` for
        pre-signed link XML errors.
    """
    text = body.decode("utf-8", errors="replace")
    error_code: str | None = None
    error_msg: str | None = None
    request_id = header(headers, "X-Request-Id") or header(headers, "x-obs-request-id")
    stripped = text.lstrip()
    if stripped.startswith("<"):
        error_code, error_msg, xml_request_id = _error_fields_from_xml(stripped)
        request_id = request_id or xml_request_id
    else:
        try:
            payload = json.loads(text)
        except ValueError:
            payload = None
        error_code, error_msg = _error_fields_from_json(payload)
        if isinstance(payload, dict) and not request_id and isinstance(payload.get("request_id"), str):
            request_id = payload["request_id"]
    if error_code is None and error_msg is None:
        snippet = " ".join(text.split())[:_ERROR_TEXT_LIMIT]
        error_msg = snippet or None

    kwargs: dict[str, Any] = dict(
        status_code=status,
        error_code=error_code,
        error_msg=error_msg,
        request_id=request_id,
        method=method,
        path=path,
    )
    detail = f": {error_msg}" if error_msg else ""
    service = "IAM" if error_kind == "iam" else "ModelArts"
    if error_kind == "obs":
        if status == 403 and (
            error_code == "RequestTimeTooSkewed" or (error_msg or "").strip() == "Request has expired."
        ):
            return ModelArtsLogLinkExpiredError(f"The log link expired ({path}){detail}")
        exc: ModelArtsApiError = (ModelArtsAuthError if status in (401, 403) else ModelArtsApiError)(
            f"OBS refused GET {path} with HTTP {status}{detail}", **kwargs
        )
    elif status == 404 or error_code == "ModelArts.2775":
        what = (
            f"Training job {training_job_id!r} was not found" if training_job_id else f"{path} was not found"
        )
        exc = ModelArtsNotFoundError(f"{what} ({service} {method} {path}){detail}", **kwargs)
    elif status in (401, 403):
        exc = ModelArtsAuthError(f"{service} refused the credentials for {method} {path}{detail}", **kwargs)
    else:
        exc = ModelArtsApiError(f"{service} {method} {path} failed with HTTP {status}{detail}", **kwargs)
    if status == 429 or status >= 500:
        exc.retry_after = parse_retry_after(header(headers, "Retry-After"))  # type: ignore[attr-defined]
    return exc
