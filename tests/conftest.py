"""Test-session set-up shared by every test: an isolated AIRFLOW_HOME with SQLite, set before Airflow loads."""

from __future__ import annotations

import os
import tempfile

_HOME = tempfile.mkdtemp(prefix="modelarts-tests-airflow-home-")
os.environ.setdefault("AIRFLOW_HOME", _HOME)
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
os.environ.setdefault("AIRFLOW__CORE__UNIT_TEST_MODE", "True")
os.environ.setdefault("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", f"sqlite:///{_HOME}/airflow.db")

pytest_plugins = [
    "tests.fixtures.emulator",
    "tests.fixtures.moto_server",
    "tests.fixtures.smtp_server",
    "tests.fixtures.strict_s3_proxy",
]
