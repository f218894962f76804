"""Rate-limited archival: 200 finished jobs x 4 worker logs through the scheduled-archival pattern against the
emulator limited to 20 ModelArts API calls per second, with client-side pacing on and off.

The pattern of ``example_modelarts_scheduled_archival``: one listing of the finished jobs, then one archive
operator per job, at most 4 at a time (``max_active_tis_per_dag=4``). As under Airflow, each of the 4
concurrent archive task instances is its own process; pacing is per process, so with pacing on each gets
``requests_per_second`` = 20 / 4 = 5 (the set-up the docs recommend with a 4-slot pool). Each job costs
1 + 4 API calls (job details, one log link per worker log): 1,000 calls, so the limit bounds the run from
below at 1,000 / 20 = 50 s.

Baseline in the same run: pacing off (the connection without ``requests_per_second``); the hook's retries
(backoff with jitter, 5 retries) are what is left to cope with the 429s.

The emulator runs in this process (its counters are read directly); the workers are child processes.

Usage: ``.venv/bin/python benchmarks/bench_rate_limited_archival.py [--jobs 200] [--rate 20] [--workers 4]``
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from unittest import mock

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="bench-airflow-home-"))
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")

LOGS_PER_JOB = 4


def scenario(jobs: int) -> dict:
    return {
        "jobs": [
            {
                "id": f"rl-{j:04d}",
                "timeline": [{"phase": "Completed", "at": 0}],
                "tasks": [
                    {
                        "id": f"worker-{i}",
                        "exit_code": 0,
                        "log": {"generate": {"size": 1024, "seed": j * 10 + i}},
                    }
                    for i in range(LOGS_PER_JOB)
                ],
            }
            for j in range(jobs)
        ]
    }


def worker(conn: str, dest: str, queue: Any, results: Any) -> None:
    """One archive task instance after another, like a worker slot of the pool."""
    import logging

    os.environ["AIRFLOW_CONN_MODELARTS_DEFAULT"] = conn
    logging.disable(logging.WARNING)
    # Outside a task runner every execute() prints a warning; keep the results table readable.
    os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
    from airflow_provider_modelarts.operators.modelarts import ModelArtsArchiveTaskLogsOperator

    results.put(("ready", None))  # imports done: start-up is not counted
    while (job_id := queue.get()) is not None:
        op = ModelArtsArchiveTaskLogsOperator(
            task_id="archive_task_logs", training_job_id=job_id, destination=dest, wait_for_completion=False
        )
        try:
            op.execute({"ti": mock.MagicMock(), "task": None})  # type: ignore[arg-type,typeddict-item]
            results.put((job_id, None))
        except Exception as err:
            results.put((job_id, f"{type(err).__name__}: {str(err)[:200]}"))


def run(emu: Any, *, rate: float, workers: int, paced: bool, dest: str) -> dict:
    from airflow_provider_modelarts.hooks.modelarts import ModelArtsHook
    from airflow_provider_modelarts.states import TERMINAL_PHASES

    conn = json.loads(emu.connection_json())
    if paced:
        conn["extra"]["requests_per_second"] = rate / workers
    conn_json = json.dumps(conn)
    os.environ["AIRFLOW_CONN_MODELARTS_DEFAULT"] = conn_json
    ctx = mp.get_context("spawn")
    queue, results = ctx.Queue(), ctx.Queue()
    procs = [ctx.Process(target=worker, args=(conn_json, dest, queue, results)) for _ in range(workers)]
    for proc in procs:
        proc.start()
    for _ in procs:
        results.get()
    emu.reset_counters()
    t0 = time.monotonic()
    jobs = ModelArtsHook().list_training_jobs(phases=sorted(p.value for p in TERMINAL_PHASES))
    ids = sorted(job["metadata"]["id"] for job in jobs)
    for job_id in ids:
        queue.put(job_id)
    for _ in range(workers):
        queue.put(None)
    outcomes = [results.get() for _ in ids]
    wall = time.monotonic() - t0
    for proc in procs:
        proc.join()
    time.sleep(emu.rate_limiter.limit.period)  # a full bucket again for the next run
    counters = emu.counters.snapshot()
    calls = sum(counters[k] for k in ("job", "search", "log_url", "preview", "tasks", "actions"))
    failed = [err for _, err in outcomes if err]
    return {
        "jobs": len(ids),
        "wall": wall,
        "calls": calls,
        "throttled": counters["throttled"],
        "failed": len(failed),
        "first_failure": failed[0] if failed else "",
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--rate", type=float, default=20, help="the emulator's limit, calls per second")
    parser.add_argument("--workers", type=int, default=4, help="concurrent archive task instances")
    args = parser.parse_args()

    from airflow_provider_modelarts.emulator import ModelArtsEmulator

    with (
        tempfile.TemporaryDirectory() as tmp,
        ModelArtsEmulator(scenario(args.jobs), rate_limit=f"{args.rate:g}/s") as emu,
    ):
        runs = {}
        for name, paced in (("pacing on", True), ("pacing off (baseline)", False)):
            runs[name] = run(
                emu, rate=args.rate, workers=args.workers, paced=paced, dest=f"file://{tmp}/{name[:10]}"
            )

    bound = (args.jobs * (1 + LOGS_PER_JOB)) / args.rate
    print(
        f"{args.jobs} finished jobs x {LOGS_PER_JOB} logs, {args.workers} archive task instances (processes), "
        f"emulator limit {args.rate:g} calls/s per credential; bound {bound:.0f} s"
    )
    header = (
        f"{'Run':<24} {'wall s':>7} {'vs bound':>9} {'API calls':>10} {'429s':>6} {'429 %':>6} {'failed':>7}"
    )
    print(header)
    print("-" * len(header))
    for name, r in runs.items():
        print(
            f"{name:<24} {r['wall']:>7.1f} {100 * r['wall'] / bound:>8.0f}% {r['calls']:>10} {r['throttled']:>6} "
            f"{100 * r['throttled'] / max(r['calls'], 1):>6.1f} {r['failed']:>7}"
        )
        if r["first_failure"]:
            print(f"    first failure: {r['first_failure']}")
    on = runs["pacing on"]
    ok = on["wall"] <= bound * 1.15 and on["throttled"] < 0.01 * on["calls"] and on["failed"] == 0
    print(
        f"Target (within 15% of the bound, < 1% 429s, no failed archive) with pacing on: {'met' if ok else 'NOT met'}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
