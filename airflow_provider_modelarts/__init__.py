"""Apache Airflow provider for Huawei Cloud ModelArts training-job logs."""

from __future__ import annotations

__version__ = "0.1.0"

_INTEGRATION = "Huawei Cloud ModelArts"


def get_provider_info() -> dict:
    """Describe this provider to Airflow's ProvidersManager (entry point ``apache_airflow_provider``)."""
    return {
        "package-name": "airflow-provider-modelarts",
        "name": "Huawei Cloud ModelArts",
        "description": "Archive, watch and alert on Huawei Cloud ModelArts training jobs and their logs.",
        "versions": [__version__],
        "integrations": [
            {
                "integration-name": _INTEGRATION,
                "external-doc-url": "https://support.huaweicloud.com/intl/en-us/api-modelarts/modelarts_03_0001.html",
                "tags": ["service"],
            }
        ],
        "hooks": [
            {
                "integration-name": _INTEGRATION,
                "python-modules": [
                    "airflow_provider_modelarts.hooks.modelarts",
                    "airflow_provider_modelarts.hooks.smn",
                ],
            }
        ],
        "operators": [
            {
                "integration-name": _INTEGRATION,
                "python-modules": ["airflow_provider_modelarts.operators.modelarts"],
            }
        ],
        "sensors": [
            {
                "integration-name": _INTEGRATION,
                "python-modules": ["airflow_provider_modelarts.sensors.modelarts"],
            }
        ],
        "triggers": [
            {
                "integration-name": _INTEGRATION,
                "python-modules": [
                    "airflow_provider_modelarts.triggers.modelarts",
                    "airflow_provider_modelarts.triggers.events",
                ],
            }
        ],
        "filesystems": ["airflow_provider_modelarts.fs.obs"],
        "extra-links": [
            "airflow_provider_modelarts.links.modelarts.ModelArtsTrainingJobConsoleLink",
            "airflow_provider_modelarts.links.modelarts.ModelArtsTaskLogPreviewLink",
        ],
        "notifications": [
            "airflow_provider_modelarts.notifications.modelarts.ModelArtsTaskLogsNotifier",
            "airflow_provider_modelarts.notifications.smn.SmnNotifier",
        ],
        "connection-types": [
            {
                "connection-type": "modelarts",
                "hook-class-name": "airflow_provider_modelarts.hooks.modelarts.ModelArtsHook",
                "hook-name": "Huawei Cloud ModelArts",
                "ui-field-behaviour": {
                    "hidden-fields": ["host", "schema", "port"],
                    "relabeling": {
                        "login": "Access Key (AK) or IAM user name",
                        "password": "Secret Key (SK) or IAM password",
                    },
                    "placeholders": {
                        "login": "HPUA... (auth_type aksk) or IAM user name (auth_type token)",
                        "password": "secret key or IAM password",
                    },
                },
                "conn-fields": {
                    "project_id": {
                        "label": "Project ID",
                        "description": "Huawei Cloud project ID (1-64 letters, digits or '-'). Required.",
                        "schema": {"type": ["string", "null"]},
                    },
                    "region": {
                        "label": "Region",
                        "description": "Region id, e.g. cn-north-4; builds the ModelArts and IAM endpoints.",
                        "schema": {"type": ["string", "null"]},
                    },
                    "auth_type": {
                        "label": "Auth type",
                        "description": "'aksk' (default): login/password are AK/SK. 'token': IAM user name and password.",
                        "schema": {"type": ["string", "null"], "enum": ["aksk", "token", None]},
                    },
                    "domain_name": {
                        "label": "Account (domain) name",
                        "description": "Account name for IAM token auth; defaults to the user name.",
                        "schema": {"type": ["string", "null"]},
                    },
                    "security_token": {
                        "label": "Security token",
                        "description": "Temporary AK/SK security token (X-Security-Token).",
                        "schema": {"type": ["string", "null"]},
                        "sensitive": True,
                    },
                    "endpoint": {
                        "label": "ModelArts endpoint",
                        "description": "Overrides the region endpoint, e.g. http://127.0.0.1:8080 for the emulator.",
                        "schema": {"type": ["string", "null"]},
                    },
                    "iam_endpoint": {
                        "label": "IAM endpoint",
                        "description": "Overrides the IAM endpoint used for token auth.",
                        "schema": {"type": ["string", "null"]},
                    },
                    "obs_endpoint": {
                        "label": "OBS endpoint",
                        "description": "For obs:// destinations; overrides https://obs.{region}.myhuaweicloud.com.",
                        "schema": {"type": ["string", "null"]},
                    },
                    "smn_endpoint": {
                        "label": "SMN endpoint",
                        "description": "Overrides https://smn.{region}.myhuaweicloud.com for SmnNotifier alerts.",
                        "schema": {"type": ["string", "null"]},
                    },
                    "verify": {
                        "label": "Verify TLS",
                        "description": "true (default), false, or a CA bundle path.",
                        "schema": {"type": ["boolean", "string", "null"]},
                    },
                    "request_timeout": {
                        "label": "Request timeout (s)",
                        "description": "Per-request timeout in seconds (default 30).",
                        "schema": {"type": ["number", "null"]},
                    },
                    "max_retries": {
                        "label": "Max retries",
                        "description": "Retries for throttling, 5xx and network errors (default 5).",
                        "schema": {"type": ["integer", "null"]},
                    },
                    "requests_per_second": {
                        "label": "Requests per second",
                        "description": "Pace ModelArts API calls of each process to this rate, adapting to 429s "
                        "(default: no pacing).",
                        "schema": {"type": ["number", "null"]},
                    },
                },
            }
        ],
    }
