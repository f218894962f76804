"""How many training jobs can one triggerer watch? 1,000 ModelArtsTrainingJobTrigger in one event loop.

Starts the emulator in a separate process with N jobs that finish at staggered times, runs N triggers
(``poll_interval`` small) in one asyncio loop of this process, and measures:

* events fired (by status) and when the last one arrived;
* event-loop lag: a ticker coroutine sleeps ``TICK`` seconds in a loop and records how much later than
  asked it wakes up; the max is an upper bound on the longest time any single step blocked the loop;
* CPU seconds of this process (the emulator's CPU is not counted) and status polls made.

Baseline in the same run: the same N status polls with the synchronous hook (requests), sequentially,
in a thread pool of 32, and sequentially *inside* the event loop (what a trigger calling a blocking
client does), with the same ticker measuring the loop lag.

With ``--requests-per-second R`` the connection paces the triggers' polls (one limiter shared by all of
them, adaptive to 429s): the loop lag then also covers the waits for send slots.

With ``--stream``, a second run (against a fresh emulator with the same jobs) has every trigger
stream its job's log into the (file-backed) trigger log while waiting: each job writes one line per
second. It reports the same loop lag and CPU per poll, next to the run without streaming, plus the
API calls per job: status polls and ranged log reads per 5 minutes, log links per job.

Usage: ``.venv/bin/python benchmarks/bench_trigger_scale.py [--jobs 1000] [--poll-interval 2] [--spread 20]
[--requests-per-second R] [--stream]``
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from harness import start_emulator  # noqa: E402

os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="bench-airflow-home-"))
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")

TICK = 0.005


def _job(i: int, end: float) -> dict:
    # One log line per second while the job runs (from 1 s to its end).
    lines = {"count": max(1, int(end - 1)), "every": 1.0, "template": f"job {i} step {{n:05d}}"}
    return {
        "id": f"bench-{i:04d}",
        "timeline": [
            {"phase": "Pending", "at": 0},
            {"phase": "Running", "at": 1},
            {"phase": "Completed", "at": end},
        ],
        "tasks": [{"id": "worker-0", "exit_code": 0, "log": {"lines": lines}}],
    }


def scenario(jobs: int, first_end: float, spread: float) -> dict:
    return {"jobs": [_job(i, round(first_end + spread * i / max(jobs - 1, 1), 3)) for i in range(jobs)]}


class StepTimer:
    """Times every callback the event loop runs (each step of a trigger's coroutine is one).

    The longest one is how long a single step (one poll's request building, signing, parsing...)
    kept the loop from doing anything else.
    """

    def __init__(self) -> None:
        self.longest = 0.0
        self.steps = 0
        self.longest_what = ""
        self._original = asyncio.events.Handle._run

    def __enter__(self) -> StepTimer:
        timer, original = self, self._original

        def timed_run(handle: asyncio.events.Handle) -> None:
            t0 = time.perf_counter()
            original(handle)
            elapsed = time.perf_counter() - t0
            timer.steps += 1
            if elapsed > timer.longest:
                timer.longest = elapsed
                timer.longest_what = repr(handle)[:300]

        asyncio.events.Handle._run = timed_run  # type: ignore[method-assign,assignment]
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.events.Handle._run = self._original  # type: ignore[method-assign]


class GcPauses:
    """Durations of the garbage collector's passes (a full pass over Airflow's heap takes 100+ ms)."""

    def __init__(self) -> None:
        self.pauses: list[tuple[int, float]] = []
        self._t0 = 0.0

    def _callback(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._t0 = time.perf_counter()
        else:
            self.pauses.append((info["generation"], time.perf_counter() - self._t0))

    def __enter__(self) -> GcPauses:
        gc.callbacks.append(self._callback)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self._callback)

    @property
    def longest_ms(self) -> float:
        return max((p for _, p in self.pauses), default=0.0) * 1000


class Ticker:
    """Measures event-loop lag: how late a ``sleep(TICK)`` wakes up."""

    def __init__(self) -> None:
        self.lags: list[float] = []
        self.running = True

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while self.running:
            start = loop.time()
            await asyncio.sleep(TICK)
            self.lags.append(max(0.0, loop.time() - start - TICK))

    def summary(self) -> tuple[float, float]:
        if not self.lags:
            return 0.0, 0.0
        ordered = sorted(self.lags)
        return ordered[-1] * 1000, ordered[int(0.99 * (len(ordered) - 1))] * 1000


_COUNTED = ("get_training_job", "get_task_log_url", "read_log_range", "preview_task_log")


def _count_calls(hook: Any, calls: Counter[str]) -> None:
    for name in _COUNTED:
        original = getattr(hook, name)

        def counted(*args: Any, _original: Any = original, _name: str = name, **kwargs: Any) -> Any:
            calls[_name] += 1
            return _original(*args, **kwargs)

        setattr(hook, name, counted)


async def watch_all(job_ids: list[str], poll_interval: float, gc_freeze: bool, stream: bool = False) -> dict:
    from airflow_provider_modelarts.triggers.modelarts import (
        ModelArtsTrainingJobTrigger,
        _default_hook_factory,
    )

    calls: Counter = Counter()

    def counting_factory(conn_id: str) -> Any:
        hook = _default_hook_factory(conn_id)
        _count_calls(hook, calls)
        return hook

    ModelArtsTrainingJobTrigger.hook_factory = staticmethod(counting_factory)
    # A running triggerer has already imported Airflow's connection machinery; do that import once here
    # so that the one-time import cost is not counted as event-loop lag.
    warm = _default_hook_factory("modelarts_default")
    await warm.get_training_job(job_ids[0])
    await warm.close()
    if gc_freeze:
        # Long-lived objects (Airflow's modules, config...) leave the collector's view, as in Airflow's
        # own long-running processes; otherwise every full pass scans them all while the loop waits.
        gc.collect()
        gc.freeze()
    ticker = Ticker()
    tick_task = asyncio.create_task(ticker.run())
    started = time.monotonic()
    arrivals: list[float] = []

    async def one(job_id: str) -> dict:
        trigger = ModelArtsTrainingJobTrigger(
            training_job_id=job_id,
            poll_interval=poll_interval,
            end_time=time.time() + 600,
            stream_logs=stream,
        )
        async for event in trigger.run():
            arrivals.append(time.monotonic() - started)
            return event.payload
        return {"status": "none"}

    cpu0 = time.process_time()
    with StepTimer() as steps, GcPauses() as gc_pauses:
        events = await asyncio.gather(*(one(j) for j in job_ids))
    cpu = time.process_time() - cpu0
    ticker.running = False
    await tick_task
    max_lag, p99_lag = ticker.summary()
    return {
        "events": Counter(e["status"] for e in events),
        "wall": time.monotonic() - started,
        "last_event": max(arrivals) if arrivals else float("nan"),
        "cpu": cpu,
        "polls": calls["get_training_job"],
        "calls": dict(calls),
        "max_lag_ms": max_lag,
        "p99_lag_ms": p99_lag,
        "longest_step_ms": steps.longest * 1000,
        "steps": steps.steps,
        "longest_what": steps.longest_what,
        "gc_longest_ms": gc_pauses.longest_ms,
        "gc_full": sum(1 for generation, _ in gc_pauses.pauses if generation == 2),
    }


def sync_round(job_ids: list[str], workers: int) -> dict:
    from airflow_provider_modelarts.hooks.modelarts import ModelArtsHook

    hook = ModelArtsHook(max_retries=0)
    hook.get_training_job(job_ids[0])  # connection parsed, session warm
    durations: list[float] = []

    def poll(job_id: str) -> None:
        t0 = time.perf_counter()
        hook.get_training_job(job_id)
        durations.append(time.perf_counter() - t0)

    cpu0, wall0 = time.process_time(), time.monotonic()
    if workers <= 1:
        for job_id in job_ids:
            poll(job_id)
    else:
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(poll, job_ids))
    return {
        "wall": time.monotonic() - wall0,
        "cpu": time.process_time() - cpu0,
        "median_ms": statistics.median(durations) * 1000,
    }


async def sync_in_loop(job_ids: list[str]) -> dict:
    from airflow_provider_modelarts.hooks.modelarts import ModelArtsHook

    hook = ModelArtsHook(max_retries=0)
    hook.get_training_job(job_ids[0])
    ticker = Ticker()
    tick_task = asyncio.create_task(ticker.run())
    await asyncio.sleep(0.05)
    cpu0, wall0 = time.process_time(), time.monotonic()
    longest = 0.0
    for job_id in job_ids:
        t0 = time.perf_counter()
        hook.get_training_job(job_id)  # blocks the loop, as a trigger with a sync client would
        longest = max(longest, time.perf_counter() - t0)
        await asyncio.sleep(0)
    result = {
        "wall": time.monotonic() - wall0,
        "cpu": time.process_time() - cpu0,
        "longest_step_ms": longest * 1000,
    }
    ticker.running = False
    await tick_task
    result["max_lag_ms"], result["p99_lag_ms"] = ticker.summary()
    return result


@contextlib.contextmanager
def _stdout_to_file(path: Path) -> Iterator[None]:
    """Trigger log lines (written to standard output here) go to a file, as a triggerer writes them to
    the task log files; the figures then include formatting and writing every streamed line."""
    sys.stdout.flush()
    saved = os.dup(1)
    with path.open("wb") as sink:
        os.dup2(sink.fileno(), 1)
        try:
            yield
        finally:
            sys.stdout.flush()
            os.dup2(saved, 1)
            os.close(saved)


def _print_streaming(args: argparse.Namespace, base: dict, streaming: dict, log_path: Path) -> None:
    lines = sum(1 for line in log_path.open(errors="replace") if "] job " in line)
    header = (
        f"{'Run':<34} {'polls':>6} {'CPU s':>7} {'CPU ms/poll':>12} {'max lag ms':>11} {'p99 lag ms':>11}"
    )
    print()
    print(f"Streaming (each job writes a line per second; {lines} log lines written to the trigger log)")
    print(header)
    print("-" * len(header))
    for name, r in (("without streaming (baseline)", base), ("with streaming", streaming)):
        print(
            f"{name:<34} {r['polls']:>6} {r['cpu']:>7.2f} {1000 * r['cpu'] / max(r['polls'], 1):>12.2f} "
            f"{r['max_lag_ms']:>11.1f} {r['p99_lag_ms']:>11.1f}"
        )
    print()
    print("API calls per job per 5 minutes (rates over each run's wall time; links per job counted):")
    for name, r in (("without streaming (baseline)", base), ("with streaming", streaming)):
        per_5min = {k: 300 * v / args.jobs / r["wall"] for k, v in r["calls"].items()}
        print(
            f"  {name:<32} status polls {per_5min.get('get_training_job', 0):6.1f}, ranged log reads "
            f"{per_5min.get('read_log_range', 0):6.1f}, log links per job "
            f"{r['calls'].get('get_task_log_url', 0) / args.jobs:.2f} (run {r['wall']:.0f} s; a link lasts 300 s)"
        )
    ok = streaming["max_lag_ms"] <= 50
    print(f"Target (max event-loop lag <= 50 ms with streaming): {'met' if ok else 'NOT met'}")


def run_streaming(args: argparse.Namespace, path: Path, job_ids: list[str], base: dict, tmp: str) -> None:
    log_path = Path(tmp) / "trigger.log"
    proc, conn = start_emulator(path)
    try:
        if args.requests_per_second:  # paced as the run it is compared with
            conn_doc = json.loads(conn)
            conn_doc["extra"]["requests_per_second"] = args.requests_per_second
            conn = json.dumps(conn_doc)
        os.environ["AIRFLOW_CONN_MODELARTS_DEFAULT"] = conn
        with _stdout_to_file(log_path):
            streaming = asyncio.run(
                watch_all(job_ids, args.poll_interval, not args.no_gc_freeze, stream=True)
            )
        gc.unfreeze()
    finally:
        proc.terminate()
        proc.wait(10)
    _print_streaming(args, base, streaming, log_path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument(
        "--requests-per-second", type=float, default=None, help="pace the polls (connection extra)"
    )
    parser.add_argument("--poll-interval", type=float, default=2.0)
    parser.add_argument("--first-end", type=float, default=6.0, help="seconds until the first job completes")
    parser.add_argument(
        "--no-gc-freeze", action="store_true", help="do not gc.freeze() after start-up (shows full-GC pauses)"
    )
    parser.add_argument(
        "--spread", type=float, default=20.0, help="seconds between first and last completion"
    )
    parser.add_argument("--stream", action="store_true", help="add a run with log streaming on")
    args = parser.parse_args()

    job_ids = [f"bench-{i:04d}" for i in range(args.jobs)]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "scenario.json"
        path.write_text(json.dumps(scenario(args.jobs, args.first_end, args.spread)))
        proc, conn = start_emulator(path)
        try:
            plain_conn = conn
            if args.requests_per_second:
                conn_doc = json.loads(conn)
                conn_doc["extra"]["requests_per_second"] = args.requests_per_second
                conn = json.dumps(conn_doc)
            os.environ["AIRFLOW_CONN_MODELARTS_DEFAULT"] = conn
            print(
                f"{args.jobs} jobs completing between {args.first_end:.0f} s and "
                f"{args.first_end + args.spread:.0f} s; poll_interval {args.poll_interval} s; ticker {TICK * 1000:.0f} ms; "
                f"gc.freeze() after start-up: {not args.no_gc_freeze}; "
                f"pacing: {args.requests_per_second or 'off'} requests/s"
            )
            result = asyncio.run(watch_all(job_ids, args.poll_interval, not args.no_gc_freeze))
            gc.unfreeze()
            os.environ["AIRFLOW_CONN_MODELARTS_DEFAULT"] = plain_conn  # the baseline is never paced
            seq = sync_round(job_ids, 1)
            pool = sync_round(job_ids, 32)
            blocking = asyncio.run(sync_in_loop(job_ids))
        finally:
            proc.terminate()
            proc.wait(10)

    events = ", ".join(f"{k}={v}" for k, v in sorted(result["events"].items()))
    print()
    print(
        f"Events fired: {sum(result['events'].values())}/{args.jobs} ({events}); last after {result['last_event']:.1f} s"
    )
    print()
    header = f"{'Mode':<52} {'polls':>6} {'wall s':>8} {'CPU s':>7} {'CPU ms/poll':>12} {'max lag ms':>11} {'p99 lag ms':>11} {'longest step ms':>16}"
    print(header)
    print("-" * len(header))
    print(
        f"{'async triggers, one loop (whole wait)':<52} {result['polls']:>6} {result['wall']:>8.1f} {result['cpu']:>7.2f} "
        f"{1000 * result['cpu'] / max(result['polls'], 1):>12.2f} {result['max_lag_ms']:>11.1f} {result['p99_lag_ms']:>11.1f} {result['longest_step_ms']:>16.1f}"
    )
    for name, r in (("sync hook, sequential (one round)", seq), ("sync hook, 32 threads (one round)", pool)):
        print(
            f"{name:<52} {args.jobs:>6} {r['wall']:>8.2f} {r['cpu']:>7.2f} {1000 * r['cpu'] / args.jobs:>12.2f} "
            f"{'-':>11} {'-':>11} {'-':>16}"
        )
    print(
        f"{'sync hook inside the event loop (one round)':<52} {args.jobs:>6} {blocking['wall']:>8.2f} "
        f"{blocking['cpu']:>7.2f} {1000 * blocking['cpu'] / args.jobs:>12.2f} {blocking['max_lag_ms']:>11.1f} "
        f"{blocking['p99_lag_ms']:>11.1f} {blocking['longest_step_ms']:>16.1f}"
    )
    print()
    print(f"Sync poll round trip (median, sequential): {seq['median_ms']:.2f} ms")
    print(
        f"Loop steps timed: {result['steps']}; longest single step {result['longest_step_ms']:.1f} ms "
        f"(max ticker lag {result['max_lag_ms']:.1f} ms also counts many short steps run back to back)"
    )
    print(
        f"Garbage collector: {result['gc_full']} full passes, longest pause {result['gc_longest_ms']:.1f} ms "
        "(counted inside whichever step it interrupted)"
    )
    ok = result["events"].get("success", 0) == args.jobs and result["longest_step_ms"] < 50
    print(
        f"Target (all {args.jobs} events, no single step blocks the loop > 50 ms): {'met' if ok else 'NOT met'}"
    )
    if args.stream:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "scenario.json"
            path.write_text(json.dumps(scenario(args.jobs, args.first_end, args.spread)))
            run_streaming(args, path, job_ids, result, tmp)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
