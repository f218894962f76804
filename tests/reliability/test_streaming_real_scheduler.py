"""Live log streaming through a real scheduler, worker and separate triggerer.

``airflow dags test`` runs the trigger in-process and prints unmasked console output, so only a real
deployment shows where streamed lines land (the trigger's log file next to the task log) and that the
secret masker covers them. A triggerer restart mid-job is checked too: the new trigger resumes from
the position at deferral and says so before the repeated lines.
"""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

import pytest

from airflow_provider_modelarts.emulator import DEFAULT_SK
from tests.fixtures.airflow_cli import REPO_ROOT
from tests.fixtures.airflow_cluster import airflow_cluster, trigger_dag_run

pytestmark = [pytest.mark.slow, pytest.mark.integration, pytest.mark.timeout(480)]

LINES = 60
STREAM_DAG = REPO_ROOT / "tests" / "integration" / "dags" / "log_stream_dag.py"
LINE_RE = re.compile(r"\[(worker-\d)\] w\d line (\d{5})")


def _job(job_id: str) -> dict:
    return {
        "id": job_id,
        "timeline": [
            {"phase": "Pending", "at": 0},
            {"phase": "Running", "at": 1},
            {"phase": "Completed", "at": 1 + LINES * 0.5 + 0.5},
        ],
        "tasks": [
            {
                "id": f"worker-{i}",
                "exit_code": 0,
                # worker-1's lines carry the connection's secret key: the masker must hide it.
                "log": {
                    "lines": {
                        "count": LINES,
                        "every": 0.5,
                        "template": f"w{i} line {{n:05d}}" + (f" key={DEFAULT_SK}" if i else ""),
                    }
                },
            }
            for i in range(2)
        ],
    }


def _trigger_logs(home: Path, dag_id: str, run_id: str, task_id: str) -> list[Path]:
    base = home / "logs" / f"dag_id={dag_id}" / f"run_id={run_id}" / f"task_id={task_id}"
    return sorted(base.glob("*.trigger.*.log")) if base.exists() else []


def test_streamed_lines_reach_the_task_log_once_masked_and_survive_a_triggerer_restart(
    tmp_path: Path, emulator_factory
) -> None:
    dags = tmp_path / "dags"
    dags.mkdir()
    shutil.copy(STREAM_DAG, dags)
    emu = emulator_factory({"jobs": []})
    dag_id, run_id, job_id = "log_stream_test", "stream_real_1", "rs-stream"
    env = {
        "AIRFLOW_CONN_MODELARTS_DEFAULT": emu.connection_json(),
        "STREAM_TEST_MODE": "deferrable",
        "STREAM_TEST_JOB_ID": job_id,
        "STREAM_TEST_TASKS": "worker-0,worker-1",
        "STREAM_TEST_POLL": "1",
    }
    home = tmp_path / "home"
    with airflow_cluster(home, dags, env) as cluster:
        emu.add_job(_job(job_id))
        trigger_dag_run(cluster, dag_id, run_id)
        # Wait until the trigger has streamed some lines, then restart the triggerer mid-job.
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            text = "".join(
                p.read_text(errors="replace") for p in _trigger_logs(home, dag_id, run_id, "wait_and_stream")
            )
            if len(LINE_RE.findall(text)) >= 10:
                break
            time.sleep(0.5)
        else:
            raise AssertionError(f"no streamed lines in the trigger log\n{cluster.diagnostics()}")
        restarted = emu.now() < emu.job(job_id).terminal_time()
        cluster.procs["triggerer"].terminate()
        cluster.procs["triggerer"].wait(30)
        cluster.start("triggerer", "triggerer")
        state = cluster.wait_dag_run(dag_id, run_id, timeout=240)
        assert state == "success", f"run ended {state}\n{cluster.diagnostics()}"
        logs = cluster.task_logs(dag_id, run_id, "wait_and_stream")

    assert DEFAULT_SK not in logs
    assert "w1 line 00060 key=***" in logs
    starts = logs.count("Streaming the logs of training job rs-stream from byte positions")
    for worker in ("worker-0", "worker-1"):
        numbers = [int(n) for w, n in LINE_RE.findall(logs) if w == worker]
        # Every line at least once; in order within each trigger run; repeats only after a restart.
        assert sorted(set(numbers)) == list(range(1, LINES + 1)), numbers
        if not restarted or starts == 1:
            assert numbers == list(range(1, LINES + 1)), numbers
        else:
            # The restarted trigger begins again at the deferral position (0 here) after its start line.
            assert numbers.count(1) == 2 and numbers[-1] == LINES
    assert starts == (2 if restarted else 1), starts
    print(f"\nstreaming through a real triggerer: restarted mid-job={restarted}, trigger starts={starts}")
