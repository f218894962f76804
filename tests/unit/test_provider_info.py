from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import airflow
import jsonschema
import pytest
from packaging.version import Version

from airflow_provider_modelarts import __version__, get_provider_info
from airflow_provider_modelarts.hooks.modelarts import ModelArtsHook

AIRFLOW_V_3_2_PLUS = Version(Version(airflow.__version__).base_version) >= Version("3.2.0")
SCHEMA = Path(airflow.__file__).parent / "provider_info.schema.json"


def _import_path(path: str):
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def test_provider_info_matches_airflow_schema():
    jsonschema.validate(get_provider_info(), json.loads(SCHEMA.read_text()))


def test_version_is_single_sourced():
    from importlib.metadata import version

    assert version("airflow-provider-modelarts") == __version__


@pytest.mark.parametrize(
    "path",
    [
        *(c["hook-class-name"] for c in get_provider_info()["connection-types"]),
        *get_provider_info()["extra-links"],
        *get_provider_info()["notifications"],
    ],
)
def test_declared_classes_import(path):
    assert isinstance(_import_path(path), type)


@pytest.mark.parametrize("kind", ["hooks", "operators", "sensors", "triggers"])
def test_declared_modules_import(kind):
    for entry in get_provider_info()[kind]:
        for module in entry["python-modules"]:
            importlib.import_module(module)


def test_filesystem_module_exposes_get_fs():
    for module in get_provider_info()["filesystems"]:
        assert callable(importlib.import_module(module).get_fs)


def test_connection_type_fields_are_consistent():
    (conn,) = get_provider_info()["connection-types"]
    hook_cls = _import_path(conn["hook-class-name"])
    assert hook_cls.conn_type == conn["connection-type"] == "modelarts"
    assert hook_cls.default_conn_name == "modelarts_default"
    assert "project_id" in conn["conn-fields"]
    assert conn["conn-fields"]["security_token"].get("sensitive") is True


def _airflow_cli(*args: str) -> str:
    env = {**os.environ, "AIRFLOW__LOGGING__LOGGING_LEVEL": "ERROR"}
    out = subprocess.run(
        [sys.executable, "-m", "airflow", *args], capture_output=True, text=True, env=env, timeout=240
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def test_airflow_cli_lists_the_provider_and_its_hook():
    assert "airflow-provider-modelarts" in _airflow_cli("providers", "list", "-o", "plain")
    hooks = _airflow_cli("providers", "hooks", "-o", "plain")
    assert "modelarts" in hooks
    assert "airflow_provider_modelarts.hooks.modelarts.ModelArtsHook" in hooks


def _readme_connection_extras() -> set[str]:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    rows = [line for line in readme.splitlines() if line.startswith("| extra ")]
    return {name for row in rows for name in re.findall(r"`(\w+)`", row.split("|")[1])}


def test_connection_form_readme_table_and_parser_agree():
    (conn,) = get_provider_info()["connection-types"]
    documented = _readme_connection_extras()
    assert "obs_endpoint" in documented
    assert documented == set(conn["conn-fields"]), "README connection table vs conn-fields"
    assert ModelArtsHook.get_ui_field_behaviour() == conn["ui-field-behaviour"]


def test_documentation_url_is_set():
    from importlib.metadata import metadata

    from airflow.providers_manager import ProvidersManager

    url = "https://pypi.org/project/airflow-provider-modelarts/"
    assert f"Documentation, {url}" in metadata("airflow-provider-modelarts").get_all("Project-URL")
    info = ProvidersManager().providers["airflow-provider-modelarts"]
    # Airflow 3.2+ reads documentation-url from the package's Project-URL; 3.1 does not set it.
    if AIRFLOW_V_3_2_PLUS:
        assert info.data["documentation-url"] == url
