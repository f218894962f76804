"""Apache Airflow provider for Huawei Cloud ModelArts training-job logs."""

from __future__ import annotations

import copy
from typing import Any

__version__ = "0.1.0"

__all__ = ["__version__", "get_provider_info"]

_INTEGRATION = "Huawei Cloud ModelArts"
_PACKAGE = "airflow_provider_modelarts"

# name: (label, description, JSON types besides null, extra schema keys, sensitive)
_CONN_FIELDS: dict[str, tuple[str, str, tuple[str, ...], dict[str, Any], bool]] = {
    "project_id": (
        "Project ID",
        "Huawei Cloud project ID (1-64 letters, digits or '-'). Required.",
        ("string",),
        {},
        False,
    ),
    "region": (
        "Region",
        "Region id, e.g. cn-north-4; builds the ModelArts and IAM endpoints.",
        ("string",),
        {},
        False,
    ),
    "auth_type": (
        "Auth type",
        "'aksk' (default): login/password are AK/SK. 'token': IAM user name and password.",
        ("string",),
        {"enum": ["aksk", "token", None]},
        False,
    ),
    "domain_name": (
        "Account (domain) name",
        "Account name for IAM token auth; defaults to the user name.",
        ("string",),
        {},
        False,
    ),
    "security_token": (
        "Security token",
        "Temporary AK/SK security token (X-Security-Token).",
        ("string",),
        {},
        True,
    ),
    "endpoint": (
        "ModelArts endpoint",
        "Overrides the region endpoint, e.g. http://127.0.0.1:8080 for the emulator.",
        ("string",),
        {},
        False,
    ),
    "iam_endpoint": (
        "IAM endpoint",
        "Overrides the IAM endpoint used for token auth.",
        ("string",),
        {},
        False,
    ),
    "obs_endpoint": (
        "OBS endpoint",
        "For obs:// destinations; overrides https://obs.{region}.myhuaweicloud.com.",
        ("string",),
        {},
        False,
    ),
    "obs_config_kwargs": (
        "OBS client settings",
        'For obs:// destinations: botocore Config options, e.g. {"retries": {"max_attempts": 10}}; '
        "checksums default to when_required (OBS refuses botocore's default checksum headers).",
        ("object",),
        {},
        False,
    ),
    "log_link_hosts": (
        "Log link hosts",
        "Hosts log links may point to (fnmatch patterns), e.g. *.obs.cn-north-4.myhuaweicloud.com; "
        "empty: any host.",
        ("array", "string"),
        {"items": {"type": "string"}},
        False,
    ),
    "smn_endpoint": (
        "SMN endpoint",
        "Overrides https://smn.{region}.myhuaweicloud.com for SmnNotifier alerts.",
        ("string",),
        {},
        False,
    ),
    "verify": ("Verify TLS", "true (default), false, or a CA bundle path.", ("boolean", "string"), {}, False),
    "request_timeout": (
        "Request timeout (s)",
        "Per-request timeout in seconds (default 30).",
        ("number",),
        {},
        False,
    ),
    "max_retries": (
        "Max retries",
        "Retries for throttling, 5xx and network errors (default 5).",
        ("integer",),
        {},
        False,
    ),
    "requests_per_second": (
        "Requests per second",
        "Pace ModelArts API calls of each process to this rate, adapting to 429s (default: no pacing).",
        ("number",),
        {},
        False,
    ),
}

_UI_FIELD_BEHAVIOUR: dict[str, Any] = {
    "hidden-fields": ["host", "schema", "port"],
    "relabeling": {
        "login": "Access Key (AK) or IAM user name",
        "password": "Secret Key (SK) or IAM password",
    },
    "placeholders": {
        "login": "HPUA... (auth_type aksk) or IAM user name (auth_type token)",
        "password": "secret key or IAM password",
    },
}


def _conn_field(
    label: str, description: str, types: tuple[str, ...], schema: dict[str, Any], sensitive: bool
) -> dict[str, Any]:
    """One ``conn-fields`` entry of the connection form; every field may be left empty (null)."""
    field: dict[str, Any] = {
        "label": label,
        "description": description,
        "schema": {"type": [*types, "null"], **schema},
    }
    if sensitive:
        field["sensitive"] = True
    return field


def _modules(*names: str) -> dict[str, Any]:
    return {"integration-name": _INTEGRATION, "python-modules": [f"{_PACKAGE}.{name}" for name in names]}


def get_provider_info() -> dict[str, Any]:
    """Describe this provider to Airflow's ProvidersManager (entry point ``apache_airflow_provider``)."""
    return {
        "package-name": "airflow-provider-modelarts",
        "name": _INTEGRATION,
        "description": "Archive, watch and alert on Huawei Cloud ModelArts training jobs and their logs.",
        "versions": [__version__],
        "integrations": [
            {
                "integration-name": _INTEGRATION,
                "external-doc-url": "https://support.huaweicloud.com/intl/en-us/api-modelarts/modelarts_03_0001.html",
                "tags": ["service"],
            }
        ],
        "hooks": [_modules("hooks.modelarts", "hooks.smn")],
        "operators": [_modules("operators.modelarts")],
        "sensors": [_modules("sensors.modelarts")],
        "triggers": [_modules("triggers.modelarts", "triggers.events")],
        "filesystems": [f"{_PACKAGE}.fs.obs"],
        "extra-links": [
            f"{_PACKAGE}.links.modelarts.ModelArtsTrainingJobConsoleLink",
            f"{_PACKAGE}.links.modelarts.ModelArtsTaskLogPreviewLink",
        ],
        "notifications": [
            f"{_PACKAGE}.notifications.modelarts.ModelArtsTaskLogsNotifier",
            f"{_PACKAGE}.notifications.smn.SmnNotifier",
        ],
        "connection-types": [
            {
                "connection-type": "modelarts",
                "hook-class-name": f"{_PACKAGE}.hooks.modelarts.ModelArtsHook",
                "hook-name": _INTEGRATION,
                "ui-field-behaviour": copy.deepcopy(_UI_FIELD_BEHAVIOUR),
                "conn-fields": {name: _conn_field(*spec) for name, spec in _CONN_FIELDS.items()},
            }
        ],
    }
