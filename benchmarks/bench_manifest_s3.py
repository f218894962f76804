"""Benchmark: the manifest of a job with many tasks on ``s3://`` (moto): how its records are gathered.

The emulator and a moto S3 server run in their own processes on 127.0.0.1. A job of ``--tasks`` 1 KiB
logs is archived by ``ModelArtsArchiveTaskLogsOperator`` (``max_workers=4``, ``overwrite=True``) in a
fresh process per run; the time spent rebuilding the manifest (gathering every task's record, writing the
manifest, reading every record again to check) is reported next to the whole run, for three variants
alternating in the same run:

* the baseline: every record read back (one by one) before the write and again after it;
* every record read back in parallel (``COLLECT_WORKERS`` threads), before and after the write;
* the default: the records this run just wrote taken as written, the check after the write in parallel.

Prints a table; not a pass/fail test.

    .venv/bin/python benchmarks/bench_manifest_s3.py [--tasks 200] [--runs 2] [--tls]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench_archive_s3 import _child_env, _client, _NullTI, _start_moto
from harness import run_json_child, start_emulator

BASELINE = "one by one, all read back (baseline)"
VARIANTS = {  # name: (COLLECT_WORKERS, the run's own records taken as written)
    BASELINE: (1, False),
    "in parallel, all read back": (0, False),
    "in parallel, own records as written": (0, True),
}


def child(destination: str, workers: int, own_as_written: bool) -> None:
    from airflow.sdk.io.fs import has_fs

    from airflow_provider_modelarts.archiving import records
    from airflow_provider_modelarts.operators.modelarts import ModelArtsArchiveTaskLogsOperator

    if workers:
        records.COLLECT_WORKERS = workers
    write = records.ManifestWriter.write
    spent: list[float] = []

    def timed(self: records.ManifestWriter, known: dict | None = None) -> dict:
        start = time.perf_counter()
        try:
            return write(self, known if own_as_written else None)
        finally:
            spent.append(time.perf_counter() - start)

    records.ManifestWriter.write = timed  # type: ignore[method-assign]
    has_fs("s3")
    op = ModelArtsArchiveTaskLogsOperator(
        task_id="bench",
        training_job_id="many",
        destination=destination,
        destination_conn_id="aws_bench",
        overwrite=True,
        max_workers=4,
    )
    start = time.perf_counter()
    op.execute({"ti": _NullTI(), "task": None})  # type: ignore[typeddict-item]
    print(json.dumps({"seconds": time.perf_counter() - start, "manifest": sum(spent)}))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--tls", action="store_true", help="moto over HTTPS, as in bench_archive_s3.py")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child[0], int(args.child[1]), args.child[2] == "1")
    home = tempfile.mkdtemp(prefix="bench-manifest-s3-")
    scenario = Path(home) / "scenario.json"
    tasks = [
        {"id": f"worker-{i}", "exit_code": 0, "log": {"generate": {"size": 1024, "seed": i}}}
        for i in range(args.tasks)
    ]
    timeline = [{"phase": "Completed", "at": 0}]
    scenario.write_text(
        json.dumps({"jobs": [{"id": "many", "name": "many", "timeline": timeline, "tasks": tasks}]})
    )
    emu, conn_json = start_emulator(scenario)
    moto, endpoint = _start_moto(home if args.tls else None)
    rows: dict[str, list[dict]] = {name: [] for name in VARIANTS}
    try:
        env = _child_env(home, conn_json, endpoint, tls=args.tls)
        if args.tls:
            os.environ["AWS_CA_BUNDLE"] = env["AWS_CA_BUNDLE"]  # this process's own client too
        _client(endpoint).create_bucket(Bucket="bench-manifest")
        for i in range(args.runs):
            for name, (workers, own) in VARIANTS.items():
                child_args = ["--child", "s3://bench-manifest/many", str(workers), "1" if own else "0"]
                res = run_json_child(__file__, child_args, env)
                rows[name].append(res)
                print(
                    f"run {i + 1} {name}: {res['seconds']:.2f}s, manifest {res['manifest']:.2f}s", flush=True
                )
    finally:
        for proc in (emu, moto):
            proc.terminate()
            proc.wait(timeout=30)
    print(
        f"\n{args.tasks} tasks of 1 KiB to s3:// on moto ({'https' if args.tls else 'http'}), {args.runs} "
        f"runs each; load {os.getloadavg()[0]:.2f}"
    )
    print(f"{'':40}{'run median s':>14}{'manifest median s':>19}")
    for name, runs in rows.items():
        print(
            f"{name:40}{statistics.median(r['seconds'] for r in runs):>14.2f}"
            f"{statistics.median(r['manifest'] for r in runs):>19.2f}"
        )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
