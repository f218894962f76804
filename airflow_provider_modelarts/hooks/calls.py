"""HTTP requests of the ModelArts hooks, built and validated before any I/O.

An :class:`ApiCall` is one logical request before authentication: the signature or the IAM token is added
per attempt. Every value that enters a URL is validated here first.
"""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from airflow_provider_modelarts import __version__
from airflow_provider_modelarts.api_errors import build_api_error
from airflow_provider_modelarts.auth import build_token_request, canonical_query
from airflow_provider_modelarts.connection import (
    ModelArtsConnectionConfig,
    quote_segment,
    validate_project_id,
    validate_resource_id,
)
from airflow_provider_modelarts.exceptions import (
    ModelArtsError,
    ModelArtsTransportError,
    ModelArtsValidationError,
)
from airflow_provider_modelarts.ratelimit import AdaptiveRateLimiter, get_rate_limiter
from airflow_provider_modelarts.redaction import (
    mask_signed_url,
    redact_signed_url_secrets,
    scrub_exception_chain,
)
from airflow_provider_modelarts.transport_errors import describe_no_answer

__all__ = [
    "ENDPOINTS",
    "EVENT_LEVELS",
    "USER_AGENT",
    "ApiCall",
    "absolute_http_url",
    "api_call",
    "authorize",
    "check_link_host",
    "console_url",
    "events_call",
    "log_url_call",
    "needs_token",
    "obs_call",
    "range_call",
    "rate_limiter",
    "search_body",
    "service_call",
    "token_call",
    "validate_list_args",
]

_JOB = "/v2/{project_id}/training-jobs/{training_job_id}"
ENDPOINTS: dict[str, tuple[str, str]] = {
    "get_training_job": ("GET", _JOB),
    "list_training_jobs": ("POST", "/v2/{project_id}/training-job-searches"),
    "list_training_job_tasks": ("GET", _JOB + "/tasks"),
    "stop_training_job": ("POST", _JOB + "/actions"),
    "get_task_log_url": ("GET", _JOB + "/tasks/{task_id}/logs/url"),
    "preview_task_log": ("GET", _JOB + "/tasks/{task_id}/logs/preview"),
    "list_training_job_events": ("GET", _JOB + "/events"),
}
"""``(method, path template)`` of every ModelArts API call; path parameters are validated and quoted."""

USER_AGENT = f"airflow-provider-modelarts/{__version__}"
EVENT_LEVELS = ("Info", "Warning", "Error")
_INTL_REGION_PREFIXES = ("ap-", "af-", "la-", "sa-", "tr-", "me-", "eu-")


@dataclass
class ApiCall:
    """One logical request before auth: auth headers are added per attempt (fresh date, fresh token)."""

    method: str
    url: str
    path: str
    params: list[tuple[str, Any]] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes | None = None
    authenticated: bool = True
    training_job_id: str | None = None
    error_kind: str = "api"  # "api" (ModelArts JSON errors), "iam" (IAM JSON errors) or "obs" (XML errors)

    def no_answer(self, err: Exception) -> ModelArtsTransportError:
        """The error for an attempt that got no HTTP answer: where it went and why, never the query string."""
        if self.error_kind == "obs":
            scrub_exception_chain(err, redact_signed_url_secrets)
        return ModelArtsTransportError(
            f"{self.method} {self.path} got no answer from {describe_no_answer(err, url=self.url)}",
            method=self.method,
            path=self.path,
        )

    def error_answer(self, status: int, headers: Mapping[str, str], body: bytes) -> ModelArtsError:
        """The error for a non-2xx answer (see :func:`build_api_error`)."""
        return build_api_error(
            status,
            headers,
            body,
            method=self.method,
            path=self.path,
            training_job_id=self.training_job_id,
            error_kind=self.error_kind,
        )


def absolute_http_url(url: Any) -> str | None:
    """``url`` stripped if it is an absolute http(s) URL, else ``None``."""
    if isinstance(url, str):
        parts = urlsplit(url.strip())
        if parts.scheme in ("http", "https") and parts.hostname:
            return url.strip()
    return None


def api_call(
    config: ModelArtsConnectionConfig,
    endpoint: str,
    *,
    training_job_id: str | None = None,
    task_id: str | None = None,
    params: list[tuple[str, Any]] | None = None,
    json_body: Any = None,
    content_type: str = "application/json",
) -> ApiCall:
    """The call of ModelArts API ``endpoint`` (a key of :data:`ENDPOINTS`), its path ids validated and quoted."""
    method, template = ENDPOINTS[endpoint]
    path_params = {"project_id": quote_segment(validate_project_id(config.project_id))}
    if "{training_job_id}" in template:
        path_params["training_job_id"] = quote_segment(validate_resource_id(training_job_id))
    if "{task_id}" in template:
        path_params["task_id"] = quote_segment(validate_resource_id(task_id, "task_id"))
    path = template.format(**path_params)
    body = None
    if json_body is not None:
        body = json.dumps(json_body, separators=(",", ":")).encode("utf-8")
    return ApiCall(
        method=method,
        url=config.endpoint + path,
        path=path,
        params=list(params or []),
        headers={"Content-Type": content_type, "User-Agent": USER_AGENT},
        body=body,
        training_job_id=training_job_id,
    )


def log_url_call(
    config: ModelArtsConnectionConfig, training_job_id: str, task_id: str, download: bool
) -> ApiCall:
    """``GET .../logs/url``: a preview link (``text/plain``) or a download link (``octet-stream``)."""
    return api_call(
        config,
        "get_task_log_url",
        training_job_id=training_job_id,
        task_id=task_id,
        content_type="application/octet-stream" if download else "text/plain",
    )


def events_call(
    config: ModelArtsConnectionConfig,
    training_job_id: str,
    level: str | None,
    limit: int,
    order: str,
) -> ApiCall:
    """``GET .../events`` with validated ``level`` (see :data:`EVENT_LEVELS`), ``limit`` (1-100) and ``order``."""
    if level is not None and level not in EVENT_LEVELS:
        raise ModelArtsValidationError(f"level must be one of {EVENT_LEVELS}, got {level!r}")
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 100:
        raise ModelArtsValidationError(f"limit must be an integer from 1 to 100, got {limit!r}")
    if order not in ("asc", "desc"):
        raise ModelArtsValidationError(f"order must be 'asc' or 'desc', got {order!r}")
    params: list[tuple[str, Any]] = [("limit", limit), ("offset", 0), ("order", order)]
    if level is not None:
        params.append(("level", level))
    return api_call(config, "list_training_job_events", training_job_id=training_job_id, params=params)


def token_call(config: ModelArtsConnectionConfig) -> ApiCall:
    """The unauthenticated ``POST {iam}/v3/auth/tokens`` of a token-auth connection."""
    request = build_token_request(
        config.iam_endpoint or "",
        domain_name=config.domain_name or "",
        user_name=config.user_name or "",
        password=config.password or "",
        project_id=config.project_id,
    )
    parts = urlsplit(request.url)
    return ApiCall(
        method="POST",
        url=f"{parts.scheme}://{parts.netloc}{parts.path}",
        path=parts.path,
        params=parse_qsl(parts.query),
        headers={**request.headers, "User-Agent": USER_AGENT},
        body=request.body,
        authenticated=False,
        error_kind="iam",
    )


def service_call(method: str, url: str, json_body: Any) -> ApiCall:
    """A JSON call to another Huawei Cloud service of the connection's project (e.g. SMN)."""
    valid = absolute_http_url(url)
    if valid is None or method not in ("GET", "POST", "PUT", "DELETE"):
        raise ModelArtsValidationError("a service call needs GET/POST/PUT/DELETE and an absolute http(s) URL")
    parts = urlsplit(valid)
    body = None
    if json_body is not None:
        body = json.dumps(json_body, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return ApiCall(
        method=method,
        url=f"{parts.scheme}://{parts.netloc}{parts.path}",
        path=parts.path,
        params=parse_qsl(parts.query, keep_blank_values=True),
        headers={"Content-Type": "application/json;charset=utf-8", "User-Agent": USER_AGENT},
        body=body,
    )


def obs_call(url: str, offset: int) -> ApiCall:
    """``GET`` of a pre-signed log link from byte ``offset``, sent exactly as ModelArts returned it."""
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise ModelArtsValidationError(f"offset must be an integer >= 0, got {offset!r}")
    valid = absolute_http_url(url)
    if valid is None:
        raise ModelArtsValidationError("url must be an absolute http(s) URL")
    url = valid
    mask_signed_url(url)
    parts = urlsplit(url)
    if parts.username is not None or parts.password is not None:
        raise ModelArtsValidationError("a log link must not carry user:password@ credentials")
    # Identity: a compressed answer states the encoded size only (the archive copes, but prefers plain).
    headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
    if offset > 0:
        headers["Range"] = f"bytes={offset}-"
    # The link is sent exactly as ModelArts returned it: its signature covers the encoded query.
    return ApiCall(
        method="GET",
        url=url,
        path=urlsplit(url).path or "/",
        headers=headers,
        authenticated=False,
        error_kind="obs",
    )


def range_call(url: str, start: int, length: int, link_hosts: tuple[str, ...]) -> ApiCall:
    """``GET`` of ``length`` bytes of a log link from byte ``start``, its host checked against ``link_hosts``."""
    for name, value, low in (("start", start, 0), ("length", length, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ModelArtsValidationError(f"{name} must be an integer >= {low}, got {value!r}")
    valid = absolute_http_url(url)
    if valid is None:
        raise ModelArtsValidationError("url must be an absolute http(s) URL")
    parts = urlsplit(valid)
    if parts.username is not None or parts.password is not None:
        raise ModelArtsValidationError("a log link must not carry user:password@ credentials")
    check_link_host(valid, link_hosts)
    # Not masked here: the link comes from get_task_log_url, and errors name only its path.
    # Identity encoding: byte offsets count the log's own bytes, not a compressed body's.
    return ApiCall(
        method="GET",
        url=valid,
        path=parts.path or "/",
        headers={
            "User-Agent": USER_AGENT,
            "Accept-Encoding": "identity",
            "Range": f"bytes={start}-{start + length - 1}",
        },
        authenticated=False,
        error_kind="obs",
    )


def check_link_host(url: str, patterns: tuple[str, ...]) -> None:
    """Refuse a link whose host matches none of the connection's ``log_link_hosts`` patterns."""
    host = (urlsplit(url).hostname or "").lower()
    if patterns and not any(fnmatch.fnmatchcase(host, p) for p in patterns):
        raise ModelArtsValidationError(
            f"the log link points to host {host!r}, which matches none of log_link_hosts {list(patterns)}"
        )


def authorize(config: ModelArtsConnectionConfig, call: ApiCall) -> tuple[str, dict[str, str], bytes | None]:
    """``(url, headers, body)`` to send for one attempt: signed with AK/SK when the connection uses it.

    An IAM token is not added here but by :class:`~airflow_provider_modelarts.auth.IamTokenAuth` (see
    :func:`needs_token`), which also renews a refused token.
    """
    if call.authenticated and config.signer is not None:
        signed = config.signer.sign(
            call.method, call.url, params=call.params, headers=call.headers, body=call.body
        )
        return signed.url, signed.headers, signed.body
    query = canonical_query(call.params)
    return (f"{call.url}?{query}" if query else call.url), dict(call.headers), call.body


def needs_token(config: ModelArtsConnectionConfig, call: ApiCall) -> bool:
    """Whether ``call`` carries the connection's IAM token (token auth and an authenticated call)."""
    return call.authenticated and config.auth_type == "token"


def rate_limiter(config: ModelArtsConnectionConfig, call: ApiCall) -> AdaptiveRateLimiter | None:
    """The process-wide limiter pacing ``call`` (ModelArts API calls only), or None when pacing is off."""
    if (
        config.requests_per_second is None
        or not call.authenticated
        or not call.url.startswith(config.endpoint + "/")  # other services (SMN) have their own limits
    ):
        return None
    return get_rate_limiter(config.limiter_key, config.requests_per_second)


def search_body(
    offset: int,
    page_size: int,
    phases: list[str] | None,
    created_after_ms: int | None,
    created_before_ms: int | None,
) -> dict[str, Any]:
    """The JSON body of one ``training-job-searches`` page with the phase and creation-time filters."""
    filters: list[dict[str, Any]] = []
    if phases:
        filters.append({"key": "phase", "operator": "in", "value": [str(p) for p in phases]})
    if created_after_ms is not None or created_before_ms is not None:
        filters.append(
            {
                "key": "create_time",
                "operator": "between",
                "value": [str(created_after_ms or 0), str(created_before_ms or 2**53)],
            }
        )
    body: dict[str, Any] = {
        "offset": offset,
        "limit": page_size,
        "sort_by": "create_time",
        "order": "desc",
    }
    if filters:
        body["filters"] = filters
    return body


def validate_list_args(page_size: int) -> None:
    """Refuse a ``page_size`` that is not an integer from 1 to 50."""
    if isinstance(page_size, bool) or not isinstance(page_size, int) or not 1 <= page_size <= 50:
        raise ModelArtsValidationError(f"page_size must be an integer from 1 to 50, got {page_size!r}")


def console_url(config: ModelArtsConnectionConfig, training_job_id: str) -> str:
    """The console page of a job in the connection's region; ``""`` without a region."""
    job = quote_segment(validate_resource_id(training_job_id))
    if config.region is None:
        return ""  # an endpoint-only connection (e.g. the emulator): no console to link to
    host = (
        "console-intl.huaweicloud.com"
        if config.region.startswith(_INTL_REGION_PREFIXES)
        else "console.huaweicloud.com"
    )
    return f"https://{host}/modelarts/?region={config.region}#/trainingJobs/{job}"
