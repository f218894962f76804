"""A local ModelArts training-job + IAM + OBS emulator that the official Huawei SDK accepts.

Start it from Python (``ModelArtsEmulator(...).start()``) or from the command line
(``python -m airflow_provider_modelarts.emulator`` / ``modelarts-emulator``).
"""

from __future__ import annotations

from airflow_provider_modelarts.emulator.logs import FileLog, GeneratedLog, LogSource, TextLog
from airflow_provider_modelarts.emulator.scenario import ScenarioError, default_scenario
from airflow_provider_modelarts.emulator.server import (
    DEFAULT_AK,
    DEFAULT_DOMAIN,
    DEFAULT_IAM_PASSWORD,
    DEFAULT_IAM_USER,
    DEFAULT_PROJECT_ID,
    DEFAULT_REGION,
    DEFAULT_SK,
    ModelArtsEmulator,
)
from airflow_provider_modelarts.emulator.state import Counters, Knobs

__all__ = [
    "DEFAULT_AK",
    "DEFAULT_DOMAIN",
    "DEFAULT_IAM_PASSWORD",
    "DEFAULT_IAM_USER",
    "DEFAULT_PROJECT_ID",
    "DEFAULT_REGION",
    "DEFAULT_SK",
    "Counters",
    "FileLog",
    "GeneratedLog",
    "Knobs",
    "LogSource",
    "ModelArtsEmulator",
    "ScenarioError",
    "TextLog",
    "default_scenario",
]
