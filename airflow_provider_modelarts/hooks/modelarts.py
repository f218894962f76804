"""Hooks for Huawei Cloud ModelArts: connection parsing, authentication, transport, retries and every API call.

This is the only module that talks HTTP to ModelArts, IAM and OBS. Each hook has exactly one transport
choke point (:meth:`ModelArtsHook._send` / :meth:`ModelArtsAsyncHook._send`) that signs, sends, retries and
turns error answers into :class:`~airflow_provider_modelarts.exceptions.ModelArtsApiError`; both share the
request building, the error parsing and the retry predicate defined here.
"""

from __future__ import annotations

import asyncio
import fnmatch
import json
import logging
import os
import re
import ssl
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from email.utils import parsedate_to_datetime
from functools import cached_property
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit

import httpx
import requests
import tenacity
from airflow.providers.common.compat.sdk import BaseHook, mask_secret

from airflow_provider_modelarts import __version__
from airflow_provider_modelarts.auth import (
    HEADER_AUTH_TOKEN,
    TOKEN_CACHE,
    AkSkSigner,
    IamToken,
    TokenKey,
    TokenResponseError,
    build_token_request,
    canonical_query,
    parse_token_response,
)
from airflow_provider_modelarts.exceptions import (
    ModelArtsApiError,
    ModelArtsAuthError,
    ModelArtsConfigError,
    ModelArtsError,
    ModelArtsLogLinkExpiredError,
    ModelArtsNotFoundError,
    ModelArtsResponseError,
    ModelArtsTransportError,
    ModelArtsValidationError,
)
from airflow_provider_modelarts.ratelimit import AdaptiveRateLimiter, LimiterKey, get_rate_limiter
from airflow_provider_modelarts.redaction import SIGNED_URL_SECRET_PARAMS as _SIGNED_URL_SECRET_PARAMS
from airflow_provider_modelarts.redaction import (
    mark_link_private,
    mask_signed_url,
    scrub_exception_chain,
    signed_url_secrets,  # noqa: F401 - re-exported: it lived here before the redaction module
)
from airflow_provider_modelarts.transport_errors import describe_no_answer

log = logging.getLogger(__name__)

# ------------------------------------------------------------------------------------------------
# Endpoints (method, path template). Path parameters are validated and quoted before substitution.
# ------------------------------------------------------------------------------------------------

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

DEFAULT_TIMEOUT = 30.0
DEFAULT_MAX_RETRIES = 5
RETRY_AFTER_CAP = 60.0
"""Longest wait (seconds) a ``Retry-After`` header can impose on one retry."""
DEFAULT_LOG_LINK_TTL = 300
TEST_CONNECTION_TIMEOUT = 5.0
"""Longest per-request timeout (seconds) of :meth:`ModelArtsHook.test_connection`, which never retries."""
USER_AGENT = f"airflow-provider-modelarts/{__version__}"
_ERROR_BODY_LIMIT = 64 * 1024
_ERROR_TEXT_LIMIT = 500
_MAX_LIST_PAGES = 10_000

_PROJECT_ID_RE = re.compile(r"[A-Za-z0-9-]{1,64}")
_REGION_RE = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")
_REGION_IN_HOST_RE = re.compile(r"^modelarts\.([a-z0-9-]+)\.myhuaweicloud\.(?:com|cn)$")
_MAX_ID_LENGTH = 256
_AUTH_TYPES = ("aksk", "token")
_INTL_REGION_PREFIXES = ("ap-", "af-", "la-", "sa-", "tr-", "me-", "eu-")
# Endpoint naming per huaweicloudsdkmodelarts ModelArtsRegion: every region but Hong Kong ends in .com.
_REGION_DOMAIN_EXCEPTIONS = {"ap-southeast-1": "myhuaweicloud.cn"}

_verify_warning_lock = threading.Lock()
_verify_warned = False


# ------------------------------------------------------------------------------------------------
# Input validation
# ------------------------------------------------------------------------------------------------


def validate_project_id(value: Any) -> str:
    """Return ``value`` if it is a valid project id (1-64 of ``[A-Za-z0-9-]``).

    :param value: the project id.
    :raises ModelArtsValidationError: otherwise.
    """
    if not isinstance(value, str) or not _PROJECT_ID_RE.fullmatch(value):
        raise ModelArtsValidationError(f"project_id must be 1-64 letters, digits or '-', got {value!r:.80}")
    return value


def validate_resource_id(value: Any, name: str = "training_job_id") -> str:
    """Return ``value`` if it can be used as one path segment (a job id or a task id).

    Accepted: a non-empty string of at most 256 printable characters without ``/``, ``\\``, ``?``, ``#``,
    whitespace or ``..``, and not ``.``.

    :param value: the id.
    :param name: the argument name used in the error message.
    :raises ModelArtsValidationError: otherwise.
    """
    if not isinstance(value, str) or not value:
        raise ModelArtsValidationError(f"{name} must be a non-empty string, got {value!r:.80}")
    if len(value) > _MAX_ID_LENGTH:
        raise ModelArtsValidationError(f"{name} must be at most {_MAX_ID_LENGTH} characters")
    if (
        value == "."
        or ".." in value
        or any(c in "/\\?#" for c in value)
        or any(c.isspace() or not c.isprintable() for c in value)
    ):
        raise ModelArtsValidationError(
            f"{name} must not contain '/', '\\', '?', '#', whitespace, control characters or '..', "
            f"got {value!r:.80}"
        )
    return value


def _quote_segment(value: str) -> str:
    return quote(value, safe="~")


# ------------------------------------------------------------------------------------------------
# Connection
# ------------------------------------------------------------------------------------------------


def _validate_base_url(value: Any, field_name: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ModelArtsConfigError(
            f"extra '{field_name}' must be a URL like https://host[:port], got {value!r}"
        )
    url = value.strip().rstrip("/")
    parts = urlsplit(url)
    try:
        parts.port  # noqa: B018 - raises ValueError for a non-numeric or out-of-range port
    except ValueError as err:
        raise ModelArtsConfigError(f"extra '{field_name}' has an invalid port: {url!r}") from err
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ModelArtsConfigError(
            f"extra '{field_name}' must be an absolute http(s) URL like https://host[:port], got {url!r}"
        )
    if parts.path or parts.query or parts.fragment or parts.username or parts.password:
        raise ModelArtsConfigError(
            f"extra '{field_name}' must be scheme://host[:port] with no path, query or credentials, "
            f"got {url!r}"
        )
    return url


def region_endpoint(region: str) -> str:
    """The ModelArts endpoint of a region (``ap-southeast-1`` ends in ``.cn``, as in the official SDK).

    :param region: region id, e.g. ``cn-north-4``.
    """
    domain = _REGION_DOMAIN_EXCEPTIONS.get(region, "myhuaweicloud.com")
    return f"https://modelarts.{region}.{domain}"


def region_iam_endpoint(region: str) -> str:
    """The regional IAM endpoint, ``https://iam.{region}.myhuaweicloud.com``.

    :param region: region id.
    """
    return f"https://iam.{region}.myhuaweicloud.com"


def _parse_bool_or_path(value: Any) -> bool | str:
    if value is None:
        return True
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in ("true", "1", "yes", "on", ""):
            return True
        if lowered in ("false", "0", "no", "off"):
            return False
        if os.path.exists(value):
            return value
        raise ModelArtsConfigError(
            f"extra 'verify' must be true, false or the path of an existing CA bundle, got {value!r}"
        )
    raise ModelArtsConfigError(f"extra 'verify' must be a boolean or a CA bundle path, got {value!r}")


def _parse_timeout(value: Any) -> float:
    if value is None or value == "":
        return DEFAULT_TIMEOUT
    if isinstance(value, bool):
        raise ModelArtsConfigError(f"extra 'timeout' must be a number of seconds > 0, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ModelArtsConfigError(
            f"extra 'timeout' must be a number of seconds > 0, got {value!r}"
        ) from None
    if not number > 0 or number == float("inf"):
        raise ModelArtsConfigError(f"extra 'timeout' must be a number of seconds > 0, got {value!r}")
    return number


def _parse_max_retries(value: Any) -> int:
    if value is None or value == "":
        return DEFAULT_MAX_RETRIES
    if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
        raise ModelArtsConfigError(f"extra 'max_retries' must be an integer >= 0, got {value!r}")
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ModelArtsConfigError(f"extra 'max_retries' must be an integer >= 0, got {value!r}") from None
    if number < 0:
        raise ModelArtsConfigError(f"extra 'max_retries' must be an integer >= 0, got {value!r}")
    return number


def _parse_link_hosts(value: Any) -> tuple[str, ...]:
    """Extra ``log_link_hosts``: a list of ``fnmatch`` host patterns (or one comma-separated string)."""
    if value in (None, "", []):
        return ()
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(i, str) and i.strip() for i in items):
        raise ModelArtsConfigError(
            "extra 'log_link_hosts' must be a list of host patterns such as ['*.obs.cn-north-4.myhuaweicloud.com']"
        )
    return tuple(i.strip().lower() for i in items)


def _parse_requests_per_second(value: Any) -> float | None:
    if value is None or value == "":
        return None
    try:
        number = None if isinstance(value, bool) else float(value)
    except (TypeError, ValueError):
        number = None
    if number is None or not 0 < number < float("inf"):
        raise ModelArtsConfigError(
            f"extra 'requests_per_second' must be a number > 0 (or unset for no pacing), got {value!r}"
        )
    return number


def _optional_str(extra: Mapping[str, Any], key: str) -> str | None:
    value = extra.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ModelArtsConfigError(f"extra '{key}' must be a string, got {type(value).__name__}")
    return value.strip() or None


def _optional_base_url(extra: Mapping[str, Any], key: str) -> str | None:
    value = _optional_str(extra, key)
    return None if value is None else _validate_base_url(value, key)


@dataclass(frozen=True)
class ModelArtsConnectionConfig:
    """The ``modelarts`` connection, parsed and validated.

    :param project_id: Huawei Cloud project id.
    :param endpoint: ModelArts base URL ``scheme://host[:port]``.
    :param auth_type: ``aksk`` or ``token``.
    :param region: region id, when known.
    :param iam_endpoint: IAM base URL (token auth).
    :param access_key: AK (aksk auth).
    :param secret_key: SK (aksk auth).
    :param security_token: temporary-credential security token (aksk auth).
    :param user_name: IAM user name (token auth).
    :param password: IAM password (token auth).
    :param domain_name: account (domain) name (token auth).
    :param verify: TLS verification: ``True``, ``False`` or a CA bundle path.
    :param timeout: per-request timeout in seconds.
    :param max_retries: retries after the first attempt for retryable failures.
    :param log_link_hosts: ``fnmatch`` patterns of the hosts log links may point to (empty: any host).
    :param requests_per_second: pace ModelArts API calls of this process to this rate (shared by every hook
        with the same endpoint and credential); None for no pacing.
    :param smn_endpoint: SMN base URL overriding ``https://smn.{region}.myhuaweicloud.com`` (extra ``smn_endpoint``).
    """

    project_id: str
    endpoint: str
    auth_type: str = "aksk"
    region: str | None = None
    iam_endpoint: str | None = None
    access_key: str | None = None
    secret_key: str | None = field(default=None, repr=False)
    security_token: str | None = field(default=None, repr=False)
    user_name: str | None = None
    password: str | None = field(default=None, repr=False)
    domain_name: str | None = None
    verify: bool | str = True
    timeout: float = DEFAULT_TIMEOUT
    max_retries: int = DEFAULT_MAX_RETRIES
    log_link_hosts: tuple[str, ...] = ()
    requests_per_second: float | None = None
    smn_endpoint: str | None = None

    @classmethod
    def from_connection(
        cls, conn: Any, *, mask: Callable[[str], None] | None = None
    ) -> ModelArtsConnectionConfig:
        """Parse an Airflow connection object (``login``, ``password``, ``extra``).

        :param conn: the connection.
        :param mask: registers a secret with the masker (default ``mask_secret``).
        """
        return cls.from_fields(
            login=getattr(conn, "login", None),
            password=getattr(conn, "password", None),
            extra=getattr(conn, "extra", None),
            mask=mask,
            host=getattr(conn, "host", None),
        )

    @classmethod
    def from_fields(
        cls,
        *,
        login: str | None,
        password: str | None,
        extra: Any,
        mask: Callable[[str], None] | None = None,
        host: str | None = None,
    ) -> ModelArtsConnectionConfig:
        """Parse the connection fields; raise :class:`ModelArtsConfigError` naming the first bad field.

        :param login: AK (aksk) or IAM user name (token).
        :param password: SK (aksk) or IAM password (token).
        :param extra: the extra, as a dict or a JSON object string.
        :param mask: registers a secret with the masker (default ``mask_secret``).
        :param host: the connection's host field: never used (named in the error when no endpoint is set).
        """
        register = mask or mask_secret
        if isinstance(password, str) and password:
            register(password)
        extras = _parse_extra(extra)
        # Register secrets before anything else can fail and print them.
        security_token = extras.get("security_token")
        if isinstance(security_token, str) and security_token:
            register(security_token)

        if "project_id" not in extras or extras["project_id"] in (None, ""):
            raise ModelArtsConfigError(
                "extra 'project_id' is required: the Huawei Cloud project id (1-64 letters, digits or '-')"
            )
        project_id = extras["project_id"]
        if not isinstance(project_id, str) or not _PROJECT_ID_RE.fullmatch(project_id):
            raise ModelArtsConfigError(
                f"extra 'project_id' must be 1-64 letters, digits or '-', got {project_id!r:.80}"
            )

        region = _optional_str(extras, "region")
        if region is not None and not _REGION_RE.fullmatch(region):
            raise ModelArtsConfigError(f"extra 'region' must be a region id like cn-north-4, got {region!r}")

        raw_auth = extras.get("auth_type")
        auth_type = "aksk" if raw_auth in (None, "") else str(raw_auth).strip().lower()
        if auth_type not in _AUTH_TYPES:
            raise ModelArtsConfigError(f"extra 'auth_type' must be 'aksk' or 'token', got {raw_auth!r}")

        endpoint_value = _optional_str(extras, "endpoint")
        if endpoint_value is not None:
            endpoint = _validate_base_url(endpoint_value, "endpoint")
        elif region is not None:
            endpoint = region_endpoint(region)
        else:
            ignored = (
                f"; the host field ({host!r}) is not used, put the URL in extra 'endpoint'" if host else ""
            )
            raise ModelArtsConfigError(
                f"extra 'region' (e.g. cn-north-4) or 'endpoint' (https://host[:port]) is required{ignored}"
            )
        if region is None:
            match = _REGION_IN_HOST_RE.match(urlsplit(endpoint).hostname or "")
            region = match.group(1) if match else None

        login = login.strip() if isinstance(login, str) else login
        values: dict[str, Any] = {}
        if auth_type == "aksk":
            if not login:
                raise ModelArtsConfigError("login is required: the Access Key (AK) for auth_type 'aksk'")
            if not password:
                raise ModelArtsConfigError("password is required: the Secret Key (SK) for auth_type 'aksk'")
            values.update(
                access_key=login,
                secret_key=password,
                security_token=_optional_str(extras, "security_token"),
            )
            iam_endpoint = None
        else:
            if not login:
                raise ModelArtsConfigError("login is required: the IAM user name for auth_type 'token'")
            if not password:
                raise ModelArtsConfigError(
                    "password is required: the IAM user password for auth_type 'token'"
                )
            if _optional_str(extras, "security_token") is not None:
                raise ModelArtsConfigError("extra 'security_token' applies to auth_type 'aksk' only")
            iam_value = _optional_str(extras, "iam_endpoint")
            if iam_value is not None:
                iam_endpoint = _validate_base_url(iam_value, "iam_endpoint")
            elif region is not None:
                iam_endpoint = region_iam_endpoint(region)
            else:
                raise ModelArtsConfigError(
                    "extra 'iam_endpoint' (https://host[:port]) or 'region' is required for auth_type 'token'"
                )
            values.update(
                user_name=login,
                password=password,
                domain_name=_optional_str(extras, "domain_name") or login,
            )
        return cls(
            project_id=project_id,
            endpoint=endpoint,
            auth_type=auth_type,
            region=region,
            iam_endpoint=iam_endpoint,
            verify=_parse_bool_or_path(extras.get("verify")),
            timeout=_parse_timeout(extras.get("timeout")),
            max_retries=_parse_max_retries(extras.get("max_retries")),
            log_link_hosts=_parse_link_hosts(extras.get("log_link_hosts")),
            requests_per_second=_parse_requests_per_second(extras.get("requests_per_second")),
            smn_endpoint=_optional_base_url(extras, "smn_endpoint"),
            **values,
        )

    @property
    def token_key(self) -> TokenKey:
        """Key of this connection's IAM token in the process-wide cache."""
        return (self.iam_endpoint or "", self.domain_name or "", self.user_name or "", self.project_id)

    @property
    def limiter_key(self) -> LimiterKey:
        """Who shares a rate limiter: the endpoint and the AK (aksk) or the IAM user (token)."""
        if self.auth_type == "aksk":
            return LimiterKey(self.endpoint, f"ak:{self.access_key}")
        return LimiterKey(self.endpoint, f"user:{self.domain_name}/{self.user_name}")

    @cached_property
    def signer(self) -> AkSkSigner | None:
        """The AK/SK signer (``None`` for token auth)."""
        if self.auth_type != "aksk" or not self.access_key or not self.secret_key:
            return None
        return AkSkSigner(
            self.access_key,
            self.secret_key,
            project_id=self.project_id,
            security_token=self.security_token,
        )


def _parse_extra(extra: Any) -> dict[str, Any]:
    if extra is None or extra == "":
        return {}
    if isinstance(extra, Mapping):
        return dict(extra)
    if isinstance(extra, str | bytes):
        try:
            parsed = json.loads(extra)
        except ValueError:
            raise ModelArtsConfigError(
                'the connection extra must be a JSON object, e.g. {"project_id": "...", "region": "cn-north-4"}'
            ) from None
        if not isinstance(parsed, dict):
            raise ModelArtsConfigError(
                f"the connection extra must be a JSON object, got a JSON {type(parsed).__name__}"
            )
        return parsed
    raise ModelArtsConfigError(
        f"the connection extra must be a dict or a JSON string, got {type(extra).__name__}"
    )


def _warn_verify_disabled() -> None:
    global _verify_warned
    with _verify_warning_lock:
        if _verify_warned:
            return
        _verify_warned = True
    log.warning("TLS certificate verification is disabled for ModelArts connections (extra verify=false).")


# ------------------------------------------------------------------------------------------------
# Secrets in signed URLs
# ------------------------------------------------------------------------------------------------


async def _amask(secret: str) -> None:
    """Register a secret from async code without blocking the triggerer's event loop."""
    try:
        from airflow.sdk.log import amask_secret
    except ImportError:
        mask_secret(secret)
    else:
        await amask_secret(secret)


def redact_url(url: str) -> str:
    """``url`` without its query string, safe to log.

    :param url: any URL.
    """
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}" + ("?..." if parts.query else "")


_SECRET_PARAM_NAMES_RE = "|".join(map(re.escape, sorted(_SIGNED_URL_SECRET_PARAMS)))
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


def install_urllib3_log_filter() -> None:
    """Add :class:`SignedUrlLogFilter` to the ``urllib3`` loggers that name request URLs (idempotent)."""
    for name in _URLLIB3_LOGGERS:
        logger = logging.getLogger(name)
        if not any(type(f).__name__ == SignedUrlLogFilter.__name__ for f in logger.filters):
            logger.addFilter(SignedUrlLogFilter())


install_urllib3_log_filter()


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


def _absolute_http_url(url: Any) -> str | None:
    """``url`` stripped if it is an absolute http(s) URL, else ``None``."""
    if isinstance(url, str):
        parts = urlsplit(url.strip())
        if parts.scheme in ("http", "https") and parts.hostname:
            return url.strip()
    return None


def _validate_http_url(
    url: Any, *, what: str, status_code: int | None = None, request_id: str | None = None
) -> str:
    valid = _absolute_http_url(url)
    if valid is not None:
        return valid
    raise ModelArtsResponseError(
        f"{what} is not an absolute http(s) URL",
        status_code=status_code,
        request_id=request_id,
    )


# ------------------------------------------------------------------------------------------------
# Requests, errors and retries shared by both hooks
# ------------------------------------------------------------------------------------------------


@dataclass
class _Call:
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


def _header(headers: Mapping[str, str], name: str) -> str | None:
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
    request_id = _header(headers, "X-Request-Id") or _header(headers, "x-obs-request-id")
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
        exc.retry_after = parse_retry_after(_header(headers, "Retry-After"))  # type: ignore[attr-defined]
    return exc


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


class _ModelArtsBase:
    """Request building shared by the sync and async hooks (no I/O here)."""

    modelarts_conn_id: str
    _max_retries: int | None
    _timeout: float | None
    _retry_wait: tenacity.wait.wait_base | None

    def _retry_kwargs(self, config: ModelArtsConnectionConfig) -> dict[str, Any]:
        max_retries = config.max_retries if self._max_retries is None else self._max_retries
        return dict(
            stop=tenacity.stop_after_attempt(max_retries + 1),
            wait=self._retry_wait if self._retry_wait is not None else RetryAfterWait(),
            retry=tenacity.retry_if_exception(is_retryable_error),
            before_sleep=_log_retry,
            reraise=True,
        )

    @staticmethod
    def _rate_limiter(config: ModelArtsConnectionConfig, call: _Call) -> AdaptiveRateLimiter | None:
        """The process-wide limiter pacing ``call`` (ModelArts API calls only), or None when pacing is off."""
        if (
            config.requests_per_second is None
            or not call.authenticated
            or not call.url.startswith(config.endpoint + "/")  # other services (SMN) have their own limits
        ):
            return None
        return get_rate_limiter(config.limiter_key, config.requests_per_second)

    def _request_timeout(self, config: ModelArtsConnectionConfig, timeout: float | None = None) -> float:
        if timeout is not None:
            return timeout
        return config.timeout if self._timeout is None else self._timeout

    @staticmethod
    def _api_call(
        config: ModelArtsConnectionConfig,
        endpoint: str,
        *,
        training_job_id: str | None = None,
        task_id: str | None = None,
        params: list[tuple[str, Any]] | None = None,
        json_body: Any = None,
        content_type: str = "application/json",
    ) -> _Call:
        method, template = ENDPOINTS[endpoint]
        path_params = {"project_id": _quote_segment(validate_project_id(config.project_id))}
        if "{training_job_id}" in template:
            path_params["training_job_id"] = _quote_segment(validate_resource_id(training_job_id))
        if "{task_id}" in template:
            path_params["task_id"] = _quote_segment(validate_resource_id(task_id, "task_id"))
        path = template.format(**path_params)
        body = None
        if json_body is not None:
            body = json.dumps(json_body, separators=(",", ":")).encode("utf-8")
        return _Call(
            method=method,
            url=config.endpoint + path,
            path=path,
            params=list(params or []),
            headers={"Content-Type": content_type, "User-Agent": USER_AGENT},
            body=body,
            training_job_id=training_job_id,
        )

    @classmethod
    def _log_url_call(
        cls, config: ModelArtsConnectionConfig, training_job_id: str, task_id: str, download: bool
    ) -> _Call:
        return cls._api_call(
            config,
            "get_task_log_url",
            training_job_id=training_job_id,
            task_id=task_id,
            content_type="application/octet-stream" if download else "text/plain",
        )

    @classmethod
    def _events_call(
        cls,
        config: ModelArtsConnectionConfig,
        training_job_id: str,
        level: str | None,
        limit: int,
        order: str,
    ) -> _Call:
        if level is not None and level not in _EVENT_LEVELS:
            raise ModelArtsValidationError(f"level must be one of {_EVENT_LEVELS}, got {level!r}")
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 100:
            raise ModelArtsValidationError(f"limit must be an integer from 1 to 100, got {limit!r}")
        if order not in ("asc", "desc"):
            raise ModelArtsValidationError(f"order must be 'asc' or 'desc', got {order!r}")
        params: list[tuple[str, Any]] = [("limit", limit), ("offset", 0), ("order", order)]
        if level is not None:
            params.append(("level", level))
        return cls._api_call(
            config, "list_training_job_events", training_job_id=training_job_id, params=params
        )

    @staticmethod
    def _token_call(config: ModelArtsConnectionConfig) -> _Call:
        request = build_token_request(
            config.iam_endpoint or "",
            domain_name=config.domain_name or "",
            user_name=config.user_name or "",
            password=config.password or "",
            project_id=config.project_id,
        )
        parts = urlsplit(request.url)
        return _Call(
            method="POST",
            url=f"{parts.scheme}://{parts.netloc}{parts.path}",
            path=parts.path,
            params=parse_qsl(parts.query),
            headers={**request.headers, "User-Agent": USER_AGENT},
            body=request.body,
            authenticated=False,
            error_kind="iam",
        )

    @staticmethod
    def _service_call(method: str, url: str, json_body: Any) -> _Call:
        """A JSON call to another Huawei Cloud service of the connection's project (e.g. SMN)."""
        valid = _absolute_http_url(url)
        if valid is None or method not in ("GET", "POST", "PUT", "DELETE"):
            raise ModelArtsValidationError(
                "a service call needs GET/POST/PUT/DELETE and an absolute http(s) URL"
            )
        parts = urlsplit(valid)
        body = None
        if json_body is not None:
            body = json.dumps(json_body, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        return _Call(
            method=method,
            url=f"{parts.scheme}://{parts.netloc}{parts.path}",
            path=parts.path,
            params=parse_qsl(parts.query, keep_blank_values=True),
            headers={"Content-Type": "application/json;charset=utf-8", "User-Agent": USER_AGENT},
            body=body,
        )

    @staticmethod
    def _authorize(
        config: ModelArtsConnectionConfig, call: _Call, token: str | None
    ) -> tuple[str, dict[str, str], bytes | None]:
        """``(url, headers, body)`` to send for one attempt."""
        if call.authenticated and config.signer is not None:
            signed = config.signer.sign(
                call.method, call.url, params=call.params, headers=call.headers, body=call.body
            )
            return signed.url, signed.headers, signed.body
        headers = dict(call.headers)
        if call.authenticated and token is not None:
            headers[HEADER_AUTH_TOKEN] = token
        query = canonical_query(call.params)
        return (f"{call.url}?{query}" if query else call.url), headers, call.body

    @staticmethod
    def _parse_token(
        status: int, headers: Mapping[str, str], body: bytes, mask: Callable[[str], None] | None = None
    ) -> IamToken:
        try:
            token = parse_token_response(headers, body)
        except TokenResponseError as err:
            raise ModelArtsResponseError(
                f"IAM token request answered HTTP {status} but {err}",
                status_code=status,
                request_id=_header(headers, "X-Request-Id"),
            ) from err
        (mask or mask_secret)(token.token)
        return token

    @staticmethod
    def _json(call: _Call, status: int, headers: Mapping[str, str], body: bytes) -> Any:
        try:
            return json.loads(body)
        except ValueError:
            raise ModelArtsResponseError(
                f"ModelArts {call.method} {call.path} answered HTTP {status} with a body that is not JSON",
                status_code=status,
                request_id=_header(headers, "X-Request-Id"),
                method=call.method,
                path=call.path,
            ) from None

    @staticmethod
    def _expect_dict(call: _Call, payload: Any, status: int) -> dict[str, Any]:
        if not isinstance(payload, dict):
            raise ModelArtsResponseError(
                f"ModelArts {call.method} {call.path} answered with a JSON {type(payload).__name__}, "
                "expected an object",
                status_code=status,
                method=call.method,
                path=call.path,
            )
        return payload

    @staticmethod
    def _log_url_from(
        call: _Call,
        payload: Any,
        status: int,
        request_id: str | None,
        mask: Callable[[str], None] | None = None,
        *,
        register: bool = True,
    ) -> str:
        if not isinstance(payload, dict) or "obs_url" not in payload:
            raise ModelArtsResponseError(
                f"ModelArts {call.method} {call.path} answered without obs_url",
                status_code=status,
                request_id=request_id,
                method=call.method,
                path=call.path,
            )
        url = _validate_http_url(
            payload["obs_url"], what="obs_url", status_code=status, request_id=request_id
        )
        if register:
            mask_signed_url(url, mask)
        else:
            mark_link_private(url)
        return url

    @staticmethod
    def _preview_from(call: _Call, payload: Any, status: int) -> dict[str, Any]:
        content = payload.get("content", payload.get("context")) if isinstance(payload, dict) else None
        if not isinstance(content, str):
            raise ModelArtsResponseError(
                f"ModelArts {call.method} {call.path} answered without a text 'content'",
                status_code=status,
                method=call.method,
                path=call.path,
            )
        size = len(content.encode("utf-8"))

        def as_int(key: str, default: int) -> int:
            value = payload.get(key)
            return value if isinstance(value, int) and not isinstance(value, bool) else default

        current = as_int("current_size", size)
        return {"content": content, "current_size": current, "full_size": as_int("full_size", current)}

    @staticmethod
    def _search_body(
        offset: int,
        page_size: int,
        phases: list[str] | None,
        created_after_ms: int | None,
        created_before_ms: int | None,
    ) -> dict[str, Any]:
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

    @staticmethod
    def _job_matches(
        job: Any, phases: list[str] | None, created_after_ms: int | None, created_before_ms: int | None
    ) -> bool:
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

    @staticmethod
    def _validate_list_args(page_size: int) -> None:
        if isinstance(page_size, bool) or not isinstance(page_size, int) or not 1 <= page_size <= 50:
            raise ModelArtsValidationError(f"page_size must be an integer from 1 to 50, got {page_size!r}")

    def _forget_refused_token(
        self, config: ModelArtsConnectionConfig, token: str, err: ModelArtsApiError
    ) -> bool:
        """Whether ``err`` is ModelArts refusing the IAM ``token`` (401); if so, drop it from the cache."""
        if not (isinstance(err, ModelArtsAuthError) and err.status_code == 401):
            return False
        log.info("ModelArts refused the cached IAM token; getting a new one and retrying once.")
        TOKEN_CACHE.invalidate(config.token_key, token)
        return True

    @staticmethod
    def _console_url(config: ModelArtsConnectionConfig, training_job_id: str) -> str:
        job = _quote_segment(validate_resource_id(training_job_id))
        if config.region is None:
            return ""  # an endpoint-only connection (e.g. the emulator): no console to link to
        host = (
            "console-intl.huaweicloud.com"
            if config.region.startswith(_INTL_REGION_PREFIXES)
            else "console.huaweicloud.com"
        )
        return f"https://{host}/modelarts/?region={config.region}#/trainingJobs/{job}"


# ------------------------------------------------------------------------------------------------
# Sync hook
# ------------------------------------------------------------------------------------------------


def _read_connection(get_connection: Callable[[str], Any], conn_id: str) -> Any:
    """Read a connection; on Airflow < 3.2 report what the secrets backend rejected, not the fallback."""
    try:
        return get_connection(conn_id)
    except ImportError as e:
        # Outside a task, Airflow < 3.2 falls through to the task supervisor (absent here) when no
        # secrets backend returns the connection; the backend logs its own reason and raises nothing.
        raise ModelArtsConfigError(
            f"Connection {conn_id!r} could not be read: no secrets backend returned it. Check that it "
            "exists and that its extra is valid JSON (the backend's reason is logged above)."
        ) from e


def parse_connection(
    conn: Any, conn_id: str, *, mask: Callable[[str], None] | None = None
) -> ModelArtsConnectionConfig:
    """:meth:`ModelArtsConnectionConfig.from_connection`, with the connection id in every error.

    The connection's ``host`` field is not used (the endpoint is the extra ``endpoint`` or comes from
    ``region``); a warning says so when it is set.

    :param conn: the connection.
    :param conn_id: its id, for messages.
    :param mask: registers a secret with the masker (default ``mask_secret``).
    """
    try:
        config = ModelArtsConnectionConfig.from_connection(conn, mask=mask)
    except ModelArtsConfigError as err:
        raise ModelArtsConfigError(f"Connection {conn_id!r}: {err}") from None
    host = getattr(conn, "host", None)
    if host:
        log.warning(
            "Connection %r: the host field (%r) is ignored; ModelArts is reached at %s (extra 'endpoint' "
            "or the endpoint of 'region')",
            conn_id,
            host,
            config.endpoint,
        )
    return config


class ModelArtsHook(BaseHook, _ModelArtsBase):
    """Talk to Huawei Cloud ModelArts (and fetch OBS log links) over HTTP with ``requests``.

    Every call goes through :meth:`_send`: it signs (AK/SK) or adds the IAM token, applies the timeout,
    retries connection errors, timeouts, 5xx and 429 with exponential backoff and jitter (honouring
    ``Retry-After``), and raises :class:`ModelArtsApiError` subclasses for error answers.

    :param modelarts_conn_id: the ``modelarts`` connection id.
    :param retry_wait: a tenacity wait strategy replacing the default backoff (which also honours
        ``Retry-After``); e.g. ``tenacity.wait_none()`` in tests.
    :param max_retries: retries after the first attempt; default from the connection (5).
    :param timeout: per-request timeout in seconds; default from the connection (30).
    :param mask_log_links: register the signature of each log link :meth:`get_task_log_url` returns with
        Airflow's secret masker (default). ``False`` is for callers that never log a link, put it in an
        error message or push it to XCom (the archive workers): the masker grows with every secret, so
        each registration costs more than the one before.
    """

    conn_name_attr = "modelarts_conn_id"
    default_conn_name = "modelarts_default"
    conn_type = "modelarts"
    hook_name = "Huawei Cloud ModelArts"

    def __init__(
        self,
        modelarts_conn_id: str = default_conn_name,
        *,
        retry_wait: tenacity.wait.wait_base | None = None,
        max_retries: int | None = None,
        timeout: float | None = None,
        mask_log_links: bool = True,
    ) -> None:
        super().__init__()
        self.modelarts_conn_id = modelarts_conn_id
        self._retry_wait = retry_wait
        self._max_retries = max_retries
        self._timeout = timeout
        self.mask_log_links = mask_log_links

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        """Connection form behaviour for Airflow versions that do not read ``conn-fields``."""
        from airflow_provider_modelarts import get_provider_info

        return get_provider_info()["connection-types"][0]["ui-field-behaviour"]

    @cached_property
    def config(self) -> ModelArtsConnectionConfig:
        """The parsed and validated connection."""
        conn = _read_connection(self.get_connection, self.modelarts_conn_id)
        config = parse_connection(conn, self.modelarts_conn_id)
        if config.verify is False:
            _warn_verify_disabled()
        return config

    @cached_property
    def session(self) -> requests.Session:
        """The ``requests`` session every call uses."""
        session = requests.Session()
        session.headers["User-Agent"] = USER_AGENT
        return session

    # -- transport --------------------------------------------------------------------------------

    def _send(
        self,
        call: _Call,
        *,
        token: str | None = None,
        stream: bool = False,
        timeout: float | None = None,
        session: requests.Session | None = None,
    ) -> requests.Response:
        """Send ``call`` with retries; return a 2xx response or raise a :class:`ModelArtsApiError`.

        Redirects are never followed (a 3xx is an error answer, not retried).
        """
        config = self.config
        request_timeout = self._request_timeout(config, timeout)
        http = session or self.session
        limiter = self._rate_limiter(config, call)

        def attempt() -> requests.Response:
            if limiter is not None:
                limiter.acquire()
            url, headers, body = self._authorize(config, call, token)
            failure: ModelArtsTransportError | None = None
            try:
                response = http.request(
                    call.method,
                    url,
                    headers=headers,
                    data=body,
                    stream=stream,
                    timeout=request_timeout,
                    verify=config.verify,
                    allow_redirects=False,
                )
            except requests.RequestException as err:
                if call.error_kind != "obs":
                    raise call.no_answer(err) from err
                failure = call.no_answer(err)
            if failure is not None:  # raised outside the handler: the cause holds the signed link
                raise failure
            if limiter is not None:
                limiter.record(response.status_code)
            if 200 <= response.status_code < 300:
                return response
            try:
                raw = (
                    response.raw.read(_ERROR_BODY_LIMIT, decode_content=True) if stream else response.content
                )
            except Exception:
                raw = b""
            finally:
                response.close()
            raise call.error_answer(response.status_code, response.headers, raw or b"")

        return tenacity.Retrying(**self._retry_kwargs(config))(attempt)

    def _token(self) -> str:
        config = self.config

        def fetch() -> IamToken:
            response = self._send(self._token_call(config))
            return self._parse_token(response.status_code, response.headers, response.content)

        return TOKEN_CACHE.get(config.token_key, fetch).token

    def _api_json(self, call: _Call) -> tuple[Any, requests.Response]:
        """Send an authenticated ModelArts call (with token auth, re-authenticate once on a 401); parse JSON."""
        config = self.config
        if config.auth_type != "token":
            response = self._send(call)
        else:
            token = self._token()
            try:
                response = self._send(call, token=token)
            except ModelArtsApiError as err:
                if not self._forget_refused_token(config, token, err):
                    raise
                response = self._send(call, token=self._token())
        return self._json(call, response.status_code, response.headers, response.content), response

    # -- API --------------------------------------------------------------------------------------

    def get_training_job(self, training_job_id: str) -> dict:
        """Details of a training job (``GET /v2/{project_id}/training-jobs/{training_job_id}``).

        :param training_job_id: the job id.
        """
        call = self._api_call(self.config, "get_training_job", training_job_id=training_job_id)
        payload, response = self._api_json(call)
        return self._expect_dict(call, payload, response.status_code)

    def list_training_jobs(
        self,
        *,
        phases: list[str] | None = None,
        created_after_ms: int | None = None,
        created_before_ms: int | None = None,
        page_size: int = 50,
    ) -> list[dict]:
        """All training jobs matching the filters, newest first, paging through ``training-job-searches``.

        :param phases: keep jobs in these ``status.phase`` values.
        :param created_after_ms: keep jobs created at or after this epoch time (ms).
        :param created_before_ms: keep jobs created at or before this epoch time (ms).
        :param page_size: jobs per page (1-50).
        """
        self._validate_list_args(page_size)
        jobs: list[dict] = []
        seen: set[str] = set()
        for page in range(_MAX_LIST_PAGES):
            body = self._search_body(page, page_size, phases, created_after_ms, created_before_ms)
            call = self._api_call(self.config, "list_training_jobs", json_body=body)
            payload, response = self._api_json(call)
            payload = self._expect_dict(call, payload, response.status_code)
            items = payload.get("items") or []
            if not isinstance(items, list):
                raise ModelArtsResponseError(
                    "ModelArts job search answered with 'items' that is not a list",
                    status_code=response.status_code,
                    method=call.method,
                    path=call.path,
                )
            for job in items:
                if not self._job_matches(job, phases, created_after_ms, created_before_ms):
                    continue
                job_id = str((job.get("metadata") or {}).get("id", ""))
                if job_id and job_id in seen:
                    continue
                seen.add(job_id)
                jobs.append(job)
            total = payload.get("total")
            if len(items) < page_size or (isinstance(total, int) and (page + 1) * page_size >= total):
                break
        return jobs

    def list_training_job_tasks(self, training_job_id: str) -> list[dict]:
        """The tasks (workers) of a training job: ``[{task, ip, host_ip, schedule_count}, ...]``.

        :param training_job_id: the job id.
        """
        call = self._api_call(self.config, "list_training_job_tasks", training_job_id=training_job_id)
        payload, response = self._api_json(call)
        return _task_list(call, payload, response.status_code)

    def stop_training_job(self, training_job_id: str) -> dict:
        """Terminate a training job (``POST .../actions`` with ``action_type: terminate``).

        :param training_job_id: the job id.
        """
        call = self._api_call(
            self.config,
            "stop_training_job",
            training_job_id=training_job_id,
            json_body={"action_type": "terminate"},
        )
        payload, response = self._api_json(call)
        return self._expect_dict(call, payload, response.status_code)

    def get_task_log_url(self, training_job_id: str, task_id: str, download: bool = False) -> str:
        """A temporary (about 5 minutes) OBS link to a task's full log; its signature is masked.

        :param training_job_id: the job id.
        :param task_id: the task id, e.g. ``worker-0``.
        :param download: a download link (``application/octet-stream``) instead of a preview link.
        """
        call = self._log_url_call(self.config, training_job_id, task_id, download)
        payload, response = self._api_json(call)
        return self._log_url_from(
            call,
            payload,
            response.status_code,
            response.headers.get("X-Request-Id"),
            register=self.mask_log_links,
        )

    def preview_task_log(self, training_job_id: str, task_id: str) -> dict:
        """The last (up to 5 MB) of a task's log: ``{"content", "current_size", "full_size"}``.

        :param training_job_id: the job id.
        :param task_id: the task id.
        """
        call = self._api_call(
            self.config, "preview_task_log", training_job_id=training_job_id, task_id=task_id
        )
        payload, response = self._api_json(call)
        return self._preview_from(call, payload, response.status_code)

    def service_json(self, method: str, url: str, *, json_body: Any = None) -> tuple[Any, str | None]:
        """Call another Huawei Cloud service of the connection's project (e.g. SMN) over this hook's transport.

        Same signing or IAM token, timeout, retries and typed errors as every ModelArts call.

        :param method: HTTP method.
        :param url: the absolute URL, built from validated parts by the caller.
        :param json_body: the JSON body, if any.
        :return: ``(parsed JSON answer, request id)``.
        """
        call = self._service_call(method, url, json_body)
        payload, response = self._api_json(call)
        return payload, response.headers.get("X-Request-Id")

    def test_connection(self) -> tuple[bool, str]:
        """Check the connection with a cheap call (a one-job search); never raises.

        One attempt (no retries) with a timeout of at most :data:`TEST_CONNECTION_TIMEOUT` seconds, so
        Airflow's connection test answers quickly; the message says where the request went and why it
        failed.
        """
        try:
            config = self.config
            probe = ModelArtsHook(
                self.modelarts_conn_id,
                max_retries=0,
                timeout=min(self._request_timeout(config), TEST_CONNECTION_TIMEOUT),
            )
            probe.__dict__["config"] = config  # the connection as already read, not a second lookup
            call = probe._api_call(
                config, "list_training_jobs", json_body=probe._search_body(0, 1, None, None, None)
            )
            payload, response = probe._api_json(call)
            probe._expect_dict(call, payload, response.status_code)
        except Exception as err:
            return False, f"{type(err).__name__}: {err}"
        return True, f"Connected to ModelArts at {config.endpoint} (project {config.project_id})."

    def open_log_stream(
        self, url: str, *, offset: int = 0, timeout: float | None = None
    ) -> requests.Response:
        """Open a pre-signed log link as a byte stream (``stream=True``), from byte ``offset``.

        Transport errors, 5xx and 429 are retried. The caller closes the response. The answer is 200
        (whole object, e.g. when the server ignores ``Range``) or 206. The link is read with
        :attr:`link_session` (no API cookies or headers), redirects are not followed, ``user:pass@``
        is refused and the host must match the connection's ``log_link_hosts`` (when set).

        :param url: the link from :meth:`get_task_log_url`.
        :param offset: first byte wanted; sends ``Range: bytes={offset}-`` when > 0.
        :param timeout: per-request timeout (connect and between bytes).
        :raises ModelArtsLogLinkExpiredError: OBS says the link expired.
        :raises ModelArtsApiError: any other error answer (``error_code`` from the XML ``<Code>``).
        :raises ModelArtsValidationError: a link with credentials, or to a host not allowed.
        """
        call = _obs_call(url, offset)
        _check_link_host(url, self.config.log_link_hosts)
        return self._send(call, stream=True, timeout=timeout, session=self.link_session)

    @cached_property
    def link_session(self) -> requests.Session:
        """The session that reads log links: none of the API session's cookies or headers, and no
        credentials or proxies from the environment (``.netrc`` would add Basic auth)."""
        session = requests.Session()
        session.trust_env = False
        session.headers["User-Agent"] = USER_AGENT
        return session

    def read_log_range(self, url: str, *, start: int, length: int) -> dict[str, Any]:
        """Read at most ``length`` bytes of a log link from byte ``start`` (``Range: bytes=start-end``).

        :param url: a link from :meth:`get_task_log_url`.
        :param start: first byte wanted.
        :param length: most bytes wanted.
        :return: ``{"data", "start", "total"}``: the bytes, the offset of their first byte (0 when the
            server ignored ``Range`` and sent the whole object) and the log size if known. A start at
            or past the end gives no data.
        :raises ModelArtsLogLinkExpiredError: OBS says the link expired.
        """
        call = _range_call(url, start, length, self.config.log_link_hosts)
        try:
            response = self._send(call, stream=True)
        except ModelArtsApiError as err:
            if err.status_code == 416:
                return {"data": b"", "start": start, "total": None}
            raise
        with response:
            first, total = _content_range(response.status_code, response.headers.get("Content-Range"))
            wanted = length if first is not None else start + length
            data = response.raw.read(wanted, decode_content=True) or b""
        if first is None:
            total = total if total is not None else _int_header(response.headers.get("Content-Length"))
            first = 0
        return {"data": data, "start": first, "total": total}

    def get_training_job_events(
        self, training_job_id: str, *, level: str | None = None, limit: int = 10, order: str = "desc"
    ) -> list[dict]:
        """Events of a training job (``GET .../events``): ``[{"message", "level", "time", "source"}]``.

        :param training_job_id: the job id.
        :param level: ``Info``, ``Warning`` or ``Error``; None for all.
        :param limit: 1 to 100 events.
        :param order: ``desc`` (newest first) or ``asc``.
        """
        call = self._events_call(self.config, training_job_id, level, limit, order)
        payload, response = self._api_json(call)
        return _event_list(call, payload, response.status_code)

    def console_url(self, training_job_id: str) -> str:
        """Link to the job in the ModelArts console of the connection's region (no network).

        ``""`` when the connection has no region (only an ``endpoint``): there is no console to link to,
        and the extra link then shows nothing.

        :param training_job_id: the job id.
        """
        return self._console_url(self.config, training_job_id)

    @staticmethod
    def log_url_expires_at(url: str, *, default_ttl: int = DEFAULT_LOG_LINK_TTL) -> datetime:
        """When a log link expires (UTC): its ``Expires`` query parameter, else now + ``default_ttl``.

        :param url: the link.
        :param default_ttl: seconds assumed when the link carries no expiry.
        """
        return log_url_expires_at(url, default_ttl=default_ttl)


def _obs_call(url: str, offset: int) -> _Call:
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise ModelArtsValidationError(f"offset must be an integer >= 0, got {offset!r}")
    valid = _absolute_http_url(url)
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
    return _Call(
        method="GET",
        url=url,
        path=urlsplit(url).path or "/",
        headers=headers,
        authenticated=False,
        error_kind="obs",
    )


def _range_call(url: str, start: int, length: int, link_hosts: tuple[str, ...]) -> _Call:
    for name, value, low in (("start", start, 0), ("length", length, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ModelArtsValidationError(f"{name} must be an integer >= {low}, got {value!r}")
    valid = _absolute_http_url(url)
    if valid is None:
        raise ModelArtsValidationError("url must be an absolute http(s) URL")
    parts = urlsplit(valid)
    if parts.username is not None or parts.password is not None:
        raise ModelArtsValidationError("a log link must not carry user:password@ credentials")
    _check_link_host(valid, link_hosts)
    # Not masked here: the link comes from get_task_log_url, and errors name only its path.
    # Identity encoding: byte offsets count the log's own bytes, not a compressed body's.
    return _Call(
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


_CONTENT_RANGE_RE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")


def _int_header(value: str | None) -> int | None:
    return int(value) if value is not None and value.strip().isdigit() else None


def _content_range(status: int, value: str | None) -> tuple[int | None, int | None]:
    """``(first byte, total size)`` of a 206 answer; ``(None, None)`` for a whole-object 200."""
    match = _CONTENT_RANGE_RE.fullmatch((value or "").strip()) if status == 206 else None
    if match is None:
        return None, None
    total = match.group(3)
    return int(match.group(1)), (int(total) if total != "*" else None)


_EVENT_LEVELS = ("Info", "Warning", "Error")


def _event_list(call: _Call, payload: Any, status: int) -> list[dict]:
    events = payload.get("events") if isinstance(payload, dict) else None
    if not isinstance(events, list):
        raise ModelArtsResponseError(
            f"ModelArts {call.method} {call.path} answered without an events list",
            status_code=status,
            method=call.method,
            path=call.path,
        )
    return [
        {k: str(e.get(k) or "") for k in ("message", "level", "time", "source")}
        for e in events
        if isinstance(e, dict)
    ]


def _check_link_host(url: str, patterns: tuple[str, ...]) -> None:
    """Refuse a link whose host matches none of the connection's ``log_link_hosts`` patterns."""
    host = (urlsplit(url).hostname or "").lower()
    if patterns and not any(fnmatch.fnmatchcase(host, p) for p in patterns):
        raise ModelArtsValidationError(
            f"the log link points to host {host!r}, which matches none of log_link_hosts {list(patterns)}"
        )


def _task_list(call: _Call, payload: Any, status: int) -> list[dict]:
    if isinstance(payload, dict):
        for key in ("tasks", "items"):
            if isinstance(payload.get(key), list):
                payload = payload[key]
                break
    if not isinstance(payload, list):
        raise ModelArtsResponseError(
            f"ModelArts {call.method} {call.path} answered without a task list",
            status_code=status,
            method=call.method,
            path=call.path,
        )
    return [task for task in payload if isinstance(task, dict)]


# ------------------------------------------------------------------------------------------------
# Async hook
# ------------------------------------------------------------------------------------------------


class ModelArtsAsyncHook(BaseHook, _ModelArtsBase):
    """Non-blocking ModelArts client for triggers, over ``httpx.AsyncClient``.

    Shares the request building, signing, error parsing, retry predicate and the process-wide IAM token
    cache with :class:`ModelArtsHook`.

    :param modelarts_conn_id: the ``modelarts`` connection id.
    :param retry_wait: a tenacity wait strategy replacing the default backoff.
    :param max_retries: retries after the first attempt; default from the connection.
    :param timeout: per-request timeout in seconds; default from the connection.
    :param transport: an ``httpx`` transport to use instead of the network (e.g. ``httpx.MockTransport``).
    """

    conn_name_attr = "modelarts_conn_id"
    default_conn_name = "modelarts_default"
    conn_type = "modelarts"
    hook_name = "Huawei Cloud ModelArts (async)"

    def __init__(
        self,
        modelarts_conn_id: str = default_conn_name,
        *,
        retry_wait: tenacity.wait.wait_base | None = None,
        max_retries: int | None = None,
        timeout: float | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__()
        self.modelarts_conn_id = modelarts_conn_id
        self._retry_wait = retry_wait
        self._max_retries = max_retries
        self._timeout = timeout
        self._transport = transport
        self._config: ModelArtsConnectionConfig | None = None
        self._client: httpx.AsyncClient | None = None
        self._setup_lock = asyncio.Lock()
        self._token_lock = asyncio.Lock()

    async def get_config(self) -> ModelArtsConnectionConfig:
        """The parsed connection, read once (however many callers ask at once) without blocking the loop."""
        if self._config is None:
            async with self._setup_lock:
                if self._config is None:
                    self._config = await self._read_config()
        return self._config

    async def _read_config(self) -> ModelArtsConnectionConfig:
        getter: Callable[..., Any] | None = getattr(BaseHook, "aget_connection", None)
        conn = None
        if getter is not None:
            try:
                conn = await getter(self.modelarts_conn_id)
            except ImportError:
                # Airflow < 3.2 outside a task or triggerer: there is no supervisor to ask; the
                # blocking lookup (secrets backends, environment) runs in a thread instead.
                conn = None
        if conn is None:
            conn = await asyncio.to_thread(_read_connection, self.get_connection, self.modelarts_conn_id)
        secrets: list[str] = []
        try:
            config = parse_connection(conn, self.modelarts_conn_id, mask=secrets.append)
        finally:
            for secret in secrets:
                await _amask(secret)
        if config.verify is False:
            _warn_verify_disabled()
        return config

    async def get_client(self) -> httpx.AsyncClient:
        """The hook's ``httpx.AsyncClient``, built once on first use in a worker thread.

        Building it loads the CA bundle into a new SSL context (50-100 ms of CPU); doing that in a thread
        keeps the event loop, and every other trigger sharing it, running meanwhile. Callers that ask
        while it is being built wait for that one build.
        """
        if self._client is None:
            config = await self.get_config()
            async with self._setup_lock:
                if self._client is None:
                    self._client = await asyncio.to_thread(self._build_client, config)
        return self._client

    async def warm_up(self) -> None:
        """Read the connection and build the HTTP client now rather than on the first request.

        Optional: the first request does the same; errors are those the first request would raise.
        """
        await self.get_client()

    def _build_client(self, config: ModelArtsConnectionConfig) -> httpx.AsyncClient:
        verify: bool | ssl.SSLContext
        if isinstance(config.verify, str):
            verify = ssl.create_default_context(cafile=config.verify)
        else:
            verify = config.verify
        return httpx.AsyncClient(
            verify=verify,
            transport=self._transport,
            headers={"User-Agent": USER_AGENT},
            follow_redirects=False,
        )

    async def close(self) -> None:
        """Close the HTTP client."""
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def _send(
        self, call: _Call, *, token: str | None = None, timeout: float | None = None
    ) -> httpx.Response:
        """Send ``call`` with retries; return a 2xx response (body read) or raise a :class:`ModelArtsApiError`."""
        client = await self.get_client()
        config = await self.get_config()
        request_timeout = self._request_timeout(config, timeout)
        limiter = self._rate_limiter(config, call)

        async def attempt() -> httpx.Response:
            if limiter is not None:
                await limiter.aacquire()
            url, headers, body = self._authorize(config, call, token)
            try:
                response = await client.request(
                    call.method, url, headers=headers, content=body, timeout=request_timeout
                )
            except httpx.HTTPError as err:
                raise call.no_answer(err) from err
            if limiter is not None:
                limiter.record(response.status_code)
            if 200 <= response.status_code < 300:
                return response
            raise call.error_answer(
                response.status_code, response.headers, response.content[:_ERROR_BODY_LIMIT]
            )

        return await tenacity.AsyncRetrying(**self._retry_kwargs(config))(attempt)

    async def _token(self) -> str:
        config = await self.get_config()
        cached = TOKEN_CACHE.peek(config.token_key)
        if cached is not None:
            return cached.token
        async with self._token_lock:
            cached = TOKEN_CACHE.peek(config.token_key)
            if cached is not None:
                return cached.token
            response = await self._send(self._token_call(config))
            secrets: list[str] = []
            token = self._parse_token(
                response.status_code, response.headers, response.content, secrets.append
            )
            for secret in secrets:
                await _amask(secret)
            TOKEN_CACHE.store(config.token_key, token)
            return token.token

    async def _api_json(self, call: _Call) -> tuple[Any, httpx.Response]:
        config = await self.get_config()
        if config.auth_type != "token":
            response = await self._send(call)
        else:
            token = await self._token()
            try:
                response = await self._send(call, token=token)
            except ModelArtsApiError as err:
                if not self._forget_refused_token(config, token, err):
                    raise
                response = await self._send(call, token=await self._token())
        return self._json(call, response.status_code, response.headers, response.content), response

    async def get_training_job(self, training_job_id: str) -> dict:
        """Details of a training job.

        :param training_job_id: the job id.
        """
        call = self._api_call(await self.get_config(), "get_training_job", training_job_id=training_job_id)
        payload, response = await self._api_json(call)
        return self._expect_dict(call, payload, response.status_code)

    async def search_training_jobs(
        self,
        *,
        filters: list[dict[str, Any]] | None = None,
        offset: int = 0,
        limit: int = 50,
        sort_by: str = "create_time",
        order: str = "desc",
    ) -> dict[str, Any]:
        """One page of ``POST /v2/{project_id}/training-job-searches``; ``items`` is checked to be a list.

        :param filters: ``[{key, operator, value: [str]}]`` as documented for the search API.
        :param offset: the page index (not a row offset), 0 or more.
        :param limit: jobs per page, 1-50.
        :param sort_by: the sort field, e.g. ``create_time``.
        :param order: ``asc`` or ``desc``.
        """
        self._validate_list_args(limit)
        if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
            raise ModelArtsValidationError(f"offset must be an integer >= 0, got {offset!r}")
        if order not in ("asc", "desc"):
            raise ModelArtsValidationError(f"order must be 'asc' or 'desc', got {order!r:.40}")
        body: dict[str, Any] = {"offset": offset, "limit": limit, "sort_by": sort_by, "order": order}
        if filters:
            body["filters"] = filters
        call = self._api_call(await self.get_config(), "list_training_jobs", json_body=body)
        payload, response = await self._api_json(call)
        page = self._expect_dict(call, payload, response.status_code)
        if not isinstance(page.get("items") or [], list):
            raise ModelArtsResponseError(
                "ModelArts job search answered with 'items' that is not a list",
                status_code=response.status_code,
                method=call.method,
                path=call.path,
            )
        return page

    async def get_task_log_url(
        self, training_job_id: str, task_id: str, download: bool = False, *, mask: bool = True
    ) -> str:
        """A temporary OBS link to a task's log; its signature is masked.

        :param training_job_id: the job id.
        :param task_id: the task id.
        :param download: a download link instead of a preview link.
        :param mask: register the signature with the secret masker. Only a caller that keeps the link
            in memory and never logs or raises it may pass False: in a long-lived triggerer every
            registered secret stays for good and makes each later registration and log line slower.
        """
        call = self._log_url_call(await self.get_config(), training_job_id, task_id, download)
        payload, response = await self._api_json(call)
        secrets: list[str] = []
        url = self._log_url_from(
            call, payload, response.status_code, response.headers.get("X-Request-Id"), secrets.append
        )
        for secret in secrets if mask else []:
            await _amask(secret)
        return url

    async def preview_task_log(self, training_job_id: str, task_id: str) -> dict:
        """The last (up to 5 MB) of a task's log: ``{"content", "current_size", "full_size"}``.

        :param training_job_id: the job id.
        :param task_id: the task id.
        """
        config = await self.get_config()
        call = self._api_call(config, "preview_task_log", training_job_id=training_job_id, task_id=task_id)
        payload, response = await self._api_json(call)
        return self._preview_from(call, payload, response.status_code)

    async def get_training_job_events(
        self, training_job_id: str, *, level: str | None = None, limit: int = 10, order: str = "desc"
    ) -> list[dict]:
        """Events of a training job; see :meth:`ModelArtsHook.get_training_job_events`."""
        call = self._events_call(await self.get_config(), training_job_id, level, limit, order)
        payload, response = await self._api_json(call)
        return _event_list(call, payload, response.status_code)

    async def read_log_range(self, url: str, *, start: int, length: int) -> dict[str, Any]:
        """Read at most ``length`` bytes of a log link from byte ``start``; see :meth:`ModelArtsHook.read_log_range`."""
        call = _range_call(url, start, length, (await self.get_config()).log_link_hosts)
        try:
            response = await self._send(call)
        except ModelArtsApiError as err:
            if err.status_code == 416:
                return {"data": b"", "start": start, "total": None}
            raise
        first, total = _content_range(response.status_code, response.headers.get("Content-Range"))
        if first is None:
            return {"data": response.content[: start + length], "start": 0, "total": len(response.content)}
        return {"data": response.content[:length], "start": first, "total": total}

    async def service_json(self, method: str, url: str, *, json_body: Any = None) -> tuple[Any, str | None]:
        """Async :meth:`ModelArtsHook.service_json`: another Huawei Cloud service over this hook's transport.

        :param method: HTTP method.
        :param url: the absolute URL, built from validated parts by the caller.
        :param json_body: the JSON body, if any.
        :return: ``(parsed JSON answer, request id)``.
        """
        call = self._service_call(method, url, json_body)
        payload, response = await self._api_json(call)
        return payload, response.headers.get("X-Request-Id")
