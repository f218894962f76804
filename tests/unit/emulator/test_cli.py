"""The ``python -m airflow_provider_modelarts.emulator`` command."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import requests

from airflow_provider_modelarts.emulator.__main__ import build_parser

pytestmark = pytest.mark.integration


def test_parser_defaults():
    args = build_parser().parse_args([])
    assert (args.host, args.port, args.link_ttl, args.scenario) == ("127.0.0.1", 0, 300, None)


def test_cli_prints_url_first_and_serves(tmp_path):
    scenario = tmp_path / "s.yaml"
    scenario.write_text("jobs:\n  - id: cli-job\n    tasks:\n      - id: worker-0\n        log: {text: hi}\n")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "airflow_provider_modelarts.emulator",
            "--scenario",
            str(scenario),
            "--project-id",
            "cli-project",
            "--link-ttl",
            "42",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:")
        rest = [proc.stdout.readline() for _ in range(4)]
        assert "project_id=cli-project" in rest[0]
        assert "cli-job" in rest[2]
        conn = json.loads(rest[3].split("=", 1)[1].strip().strip("'"))
        assert conn["extra"]["endpoint"] == url
        resp = requests.get(f"{url}/v2/cli-project/training-jobs/cli-job", timeout=10)
        assert resp.status_code == 401
        assert resp.json()["error_code"] == "APIG.0301"
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0
