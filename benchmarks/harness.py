"""Process helpers shared by the benchmarks: the emulator in its own process, JSON-reporting children."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

__all__ = ["ROOT", "connection_of", "run_json_child", "start_emulator"]

ROOT = Path(__file__).resolve().parents[1]
_PREFIX = "AIRFLOW_CONN_MODELARTS_DEFAULT="


def connection_of(line: str) -> str | None:
    """The connection JSON in the emulator's ``export AIRFLOW_CONN_MODELARTS_DEFAULT=...`` line, else None."""
    try:
        words = shlex.split(line)
    except ValueError:
        return None
    if words and words[0] == "export":
        words = words[1:]
    if len(words) == 1 and words[0].startswith(_PREFIX):
        return words[0][len(_PREFIX) :]
    return None


def start_emulator(scenario: Path, *extra: str) -> tuple[subprocess.Popen[str], str]:
    """Run ``python -m airflow_provider_modelarts.emulator --scenario FILE [extra]`` in a new session.

    :returns: the process and the connection JSON it printed.
    """
    proc = subprocess.Popen(
        [sys.executable, "-m", "airflow_provider_modelarts.emulator", "--scenario", str(scenario), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=ROOT,
        start_new_session=True,
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        conn = connection_of(line)
        if conn is not None:
            return proc, conn
    proc.kill()
    proc.wait(timeout=30)
    raise RuntimeError("the emulator did not start")


def run_json_child(script: str, args: list[str], env: dict[str, str]) -> dict:
    """Run ``python SCRIPT ARGS`` and return the JSON document on the last line of its output.

    :param script: the benchmark script (``__file__``) whose hidden child mode does the work.
    :param args: its arguments.
    :param env: the child's environment.
    """
    proc = subprocess.run(
        [sys.executable, script, *args],
        env=env,
        cwd=str(ROOT),
        capture_output=True,
        text=True,
        timeout=1800,
    )
    if proc.returncode != 0:
        raise SystemExit(f"subprocess {args[0]} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])
