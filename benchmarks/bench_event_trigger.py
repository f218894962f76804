"""One ``ModelArtsTrainingJobEventTrigger`` watching a project with 10,000 listed training jobs.

The emulator runs in a separate process with ``--jobs`` finished jobs (created over the past week), a few
long-running ones, and new jobs that are created and finish while the benchmark runs. Per poll it
measures the ModelArts calls made and the CPU seconds of this process (the emulator's CPU is not counted):

* the event trigger's poll (watermark + keyset paging, the running jobs followed with one search);
* baseline in the same run: a naive watcher that re-lists every finished job each poll (paging
  ``training-job-searches`` by page index, newest first) and diffs the ids against those already seen.

Usage: ``.venv/bin/python benchmarks/bench_event_trigger.py [--jobs 10000] [--polls 8] [--baseline-polls 3]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from harness import start_emulator  # noqa: E402

os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="bench-airflow-home-"))
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")

TERMINAL = ["Completed", "Failed", "Terminated", "Abnormal"]


def scenario(jobs: int, arrivals: int) -> dict:
    now_ms = int(time.time() * 1000)
    week_ms = 7 * 24 * 3600 * 1000
    items: list[dict[str, Any]] = [
        {
            "id": f"hist-{i:05d}",
            "create_time": now_ms - week_ms + i * (week_ms // jobs),
            "timeline": [{"phase": ("Completed", "Failed")[i % 7 == 0], "at": 0}],
        }
        for i in range(jobs)
    ]
    items += [
        {"id": f"long-{i}", "create_time": now_ms - week_ms + i, "timeline": [{"phase": "Running", "at": 0}]}
        for i in range(5)
    ]
    items += [
        {
            "id": f"new-{i:03d}",
            "created_at": 3 + i,
            "timeline": [{"phase": "Running", "at": 3 + i}, {"phase": "Completed", "at": 4 + i}],
        }
        for i in range(arrivals)
    ]
    return {"jobs": items}


class CountingHook:
    """Wraps the async hook and counts the ModelArts calls made through it."""

    def __init__(self, hook: Any) -> None:
        self.hook = hook
        self.calls = 0

    async def search_training_jobs(self, **kwargs: Any) -> dict:
        self.calls += 1
        return await self.hook.search_training_jobs(**kwargs)

    async def get_training_job(self, job_id: str) -> dict:
        self.calls += 1
        return await self.hook.get_training_job(job_id)


async def naive_poll(hook: CountingHook, seen: set[str]) -> list[str]:
    """Baseline: page through every finished job, newest first, and keep the ids not seen before."""
    new: list[str] = []
    page = 0
    while True:
        answer = await hook.search_training_jobs(
            filters=[{"key": "phase", "operator": "in", "value": TERMINAL}], offset=page, limit=50
        )
        items = answer.get("items") or []
        for item in items:
            job_id = item["metadata"]["id"]
            if job_id not in seen:
                seen.add(job_id)
                new.append(job_id)
        if len(items) < 50:
            return new
        page += 1


async def measure(args: argparse.Namespace) -> dict[str, list[tuple[int, float, int, float]]]:
    from airflow_provider_modelarts.hooks.modelarts import ModelArtsAsyncHook
    from airflow_provider_modelarts.triggers.events import WatcherState, _Poller

    hook = CountingHook(ModelArtsAsyncHook("modelarts_default", max_retries=2))
    await hook.hook.warm_up()
    results: dict[str, list[tuple[int, float, int, float]]] = {"event trigger": [], "naive re-list": []}
    poller = _Poller(hook, phases=TERMINAL, name_filter=None, log=logging.getLogger("bench"))  # type: ignore[arg-type]
    state = WatcherState(since_ms=int(time.time() * 1000))
    for _ in range(args.polls):
        calls, cpu, wall = hook.calls, time.process_time(), time.perf_counter()
        found = await poller.poll(state, int(time.time() * 1000))
        results["event trigger"].append(
            (hook.calls - calls, time.process_time() - cpu, len(found), time.perf_counter() - wall)
        )
        await asyncio.sleep(args.interval)
    seen: set[str] = set()
    for index in range(args.baseline_polls + 1):
        calls, cpu, wall = hook.calls, time.process_time(), time.perf_counter()
        found_ids = await naive_poll(hook, seen)
        if index:  # the first pass only fills ``seen`` (it would emit all history)
            results["naive re-list"].append(
                (hook.calls - calls, time.process_time() - cpu, len(found_ids), time.perf_counter() - wall)
            )
        await asyncio.sleep(args.interval)
    await hook.hook.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--arrivals", type=int, default=30)
    parser.add_argument("--polls", type=int, default=8)
    parser.add_argument("--baseline-polls", type=int, default=3)
    parser.add_argument("--interval", type=float, default=1.0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "scenario.json"
        path.write_text(json.dumps(scenario(args.jobs, args.arrivals)))
        proc, conn = start_emulator(path)
        os.environ["AIRFLOW_CONN_MODELARTS_DEFAULT"] = conn
        try:
            results = asyncio.run(measure(args))
        finally:
            proc.kill()
            proc.wait()
    print(
        f"{args.jobs} listed finished jobs + 5 running; {args.arrivals} new jobs finishing 1/s; poll every {args.interval} s"
    )
    print(
        f"{'watcher':<16} {'polls':>5} {'calls/poll':>11} {'CPU ms/poll':>12} {'wall ms/poll':>13} {'events':>7}"
    )
    for name, rows in results.items():
        if not rows:
            continue
        steady = rows[1:] if name == "event trigger" and len(rows) > 1 else rows
        print(
            f"{name:<16} {len(steady):>5} {statistics.mean(r[0] for r in steady):>11.1f} "
            f"{1000 * statistics.mean(r[1] for r in steady):>12.1f} "
            f"{1000 * statistics.mean(r[3] for r in steady):>13.1f} {sum(r[2] for r in rows):>7}"
        )
    first = results["event trigger"][0]
    print(f"event trigger first poll (start-up): {first[0]} calls, {1000 * first[1]:.1f} ms CPU")


if __name__ == "__main__":
    main()
