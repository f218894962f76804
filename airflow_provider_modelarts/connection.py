"""The ``modelarts`` Airflow connection: its settings parsed and validated, and the ids that enter URLs.

:class:`ModelArtsConnectionConfig` is what every hook works from; :func:`parse_connection` builds it from
an Airflow connection with the connection id in every error. :func:`validate_project_id` and
:func:`validate_resource_id` check a value before it becomes a URL path segment.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any
from urllib.parse import quote, urlsplit

from airflow.providers.common.compat.sdk import mask_secret

from airflow_provider_modelarts.auth import AkSkSigner, TokenKey
from airflow_provider_modelarts.exceptions import ModelArtsConfigError, ModelArtsValidationError
from airflow_provider_modelarts.ratelimit import LimiterKey

__all__ = [
    "DEFAULT_CONN_ID",
    "DEFAULT_MAX_RETRIES",
    "DEFAULT_REQUEST_TIMEOUT",
    "ModelArtsConnectionConfig",
    "parse_connection",
    "quote_segment",
    "read_connection",
    "region_endpoint",
    "region_iam_endpoint",
    "validate_project_id",
    "validate_resource_id",
    "warn_verify_disabled",
]

log = logging.getLogger(__name__)

#: The connection id every hook, operator, sensor, trigger and notifier uses unless told otherwise.
DEFAULT_CONN_ID = "modelarts_default"
DEFAULT_REQUEST_TIMEOUT = 30.0
"""Per-request timeout (seconds) when the connection sets no ``request_timeout``."""
DEFAULT_MAX_RETRIES = 5

_PROJECT_ID_RE = re.compile(r"[A-Za-z0-9-]{1,64}")
_REGION_RE = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")
_REGION_IN_HOST_RE = re.compile(r"^modelarts\.([a-z0-9-]+)\.myhuaweicloud\.(?:com|cn)$")
_MAX_ID_LENGTH = 256
_AUTH_TYPES = ("aksk", "token")
# Endpoint naming per huaweicloudsdkmodelarts ModelArtsRegion: every region but Hong Kong ends in .com.
_REGION_DOMAIN_EXCEPTIONS = {"ap-southeast-1": "myhuaweicloud.cn"}

_verify_warning_lock = threading.Lock()
_verify_warned = False

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


def quote_segment(value: str) -> str:
    """``value`` percent-quoted as one URL path segment."""
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


def _parse_request_timeout(value: Any) -> float:
    if value is None or value == "":
        return DEFAULT_REQUEST_TIMEOUT
    if isinstance(value, bool):
        raise ModelArtsConfigError(f"extra 'request_timeout' must be a number of seconds > 0, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ModelArtsConfigError(
            f"extra 'request_timeout' must be a number of seconds > 0, got {value!r}"
        ) from None
    if not number > 0 or number == float("inf"):
        raise ModelArtsConfigError(f"extra 'request_timeout' must be a number of seconds > 0, got {value!r}")
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
    :param request_timeout: per-request timeout in seconds (extra ``request_timeout``).
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
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT
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

        project_id = _parse_project_id(extras)
        region = _optional_str(extras, "region")
        if region is not None and not _REGION_RE.fullmatch(region):
            raise ModelArtsConfigError(f"extra 'region' must be a region id like cn-north-4, got {region!r}")
        raw_auth = extras.get("auth_type")
        auth_type = "aksk" if raw_auth in (None, "") else str(raw_auth).strip().lower()
        if auth_type not in _AUTH_TYPES:
            raise ModelArtsConfigError(f"extra 'auth_type' must be 'aksk' or 'token', got {raw_auth!r}")
        endpoint, region = _parse_endpoint(extras, region, host)
        login = login.strip() if isinstance(login, str) else login
        if auth_type == "aksk":
            values = _aksk_values(login, password, extras)
        else:
            values = _token_values(login, password, extras, region)
        return cls(
            project_id=project_id,
            endpoint=endpoint,
            auth_type=auth_type,
            region=region,
            verify=_parse_bool_or_path(extras.get("verify")),
            request_timeout=_parse_request_timeout(extras.get("request_timeout")),
            max_retries=_parse_max_retries(extras.get("max_retries")),
            log_link_hosts=_parse_link_hosts(extras.get("log_link_hosts")),
            requests_per_second=_parse_requests_per_second(extras.get("requests_per_second")),
            smn_endpoint=_optional_base_url(extras, "smn_endpoint"),
            **values,
        )

    @property
    def token_key(self) -> TokenKey:
        """Key of this connection's IAM token in the process-wide cache.

        It holds a hash of the password, so a connection with a wrong password never reuses a token
        another connection of the same user obtained.
        """
        secret = hashlib.sha256((self.password or "").encode("utf-8")).hexdigest()
        return (
            self.iam_endpoint or "",
            self.domain_name or "",
            self.user_name or "",
            self.project_id,
            secret,
        )

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


def _parse_project_id(extras: Mapping[str, Any]) -> str:
    if "project_id" not in extras or extras["project_id"] in (None, ""):
        raise ModelArtsConfigError(
            "extra 'project_id' is required: the Huawei Cloud project id (1-64 letters, digits or '-')"
        )
    project_id = extras["project_id"]
    if not isinstance(project_id, str) or not _PROJECT_ID_RE.fullmatch(project_id):
        raise ModelArtsConfigError(
            f"extra 'project_id' must be 1-64 letters, digits or '-', got {project_id!r:.80}"
        )
    return project_id


def _url_or_region(
    extras: Mapping[str, Any], key: str, region: str | None, from_region: Callable[[str], str]
) -> str | None:
    """The extra ``key`` as a validated base URL, else the region's endpoint, else None."""
    value = _optional_str(extras, key)
    if value is not None:
        return _validate_base_url(value, key)
    return None if region is None else from_region(region)


def _parse_endpoint(
    extras: Mapping[str, Any], region: str | None, host: str | None
) -> tuple[str, str | None]:
    """``(endpoint, region)``: the extra ``endpoint`` or the region's; the region read from the host if unset."""
    endpoint = _url_or_region(extras, "endpoint", region, region_endpoint)
    if endpoint is None:
        ignored = f"; the host field ({host!r}) is not used, put the URL in extra 'endpoint'" if host else ""
        raise ModelArtsConfigError(
            f"extra 'region' (e.g. cn-north-4) or 'endpoint' (https://host[:port]) is required{ignored}"
        )
    if region is None:
        match = _REGION_IN_HOST_RE.match(urlsplit(endpoint).hostname or "")
        region = match.group(1) if match else None
    return endpoint, region


def _require(name: str, value: str | None, what: str) -> None:
    if not value:
        raise ModelArtsConfigError(f"{name} is required: {what}")


def _aksk_values(login: str | None, password: str | None, extras: Mapping[str, Any]) -> dict[str, Any]:
    _require("login", login, "the Access Key (AK) for auth_type 'aksk'")
    _require("password", password, "the Secret Key (SK) for auth_type 'aksk'")
    return dict(
        access_key=login,
        secret_key=password,
        security_token=_optional_str(extras, "security_token"),
        iam_endpoint=None,
    )


def _token_values(
    login: str | None, password: str | None, extras: Mapping[str, Any], region: str | None
) -> dict[str, Any]:
    _require("login", login, "the IAM user name for auth_type 'token'")
    _require("password", password, "the IAM user password for auth_type 'token'")
    if _optional_str(extras, "security_token") is not None:
        raise ModelArtsConfigError("extra 'security_token' applies to auth_type 'aksk' only")
    iam_endpoint = _url_or_region(extras, "iam_endpoint", region, region_iam_endpoint)
    if iam_endpoint is None:
        raise ModelArtsConfigError(
            "extra 'iam_endpoint' (https://host[:port]) or 'region' is required for auth_type 'token'"
        )
    return dict(
        user_name=login,
        password=password,
        domain_name=_optional_str(extras, "domain_name") or login,
        iam_endpoint=iam_endpoint,
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


def warn_verify_disabled() -> None:
    """Log once per process that TLS verification is off."""
    global _verify_warned
    with _verify_warning_lock:
        if _verify_warned:
            return
        _verify_warned = True
    log.warning("TLS certificate verification is disabled for ModelArts connections (extra verify=false).")


def read_connection(get_connection: Callable[[str], Any], conn_id: str) -> Any:
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
