"""Benchmark: one large log archived to ``s3://`` on a local moto server, against a plain boto3 upload.

Against the local emulator (its own process, as a remote OBS would be) and a moto S3 server (its own
process), both on 127.0.0.1:

* throughput: one generated log (default 256 MiB) archived by ``ModelArtsArchiveTaskLogsOperator`` to
  ``s3://`` (download, sha256, staged multipart upload, verification, commit, record and manifest),
  against the baseline ``boto3`` ``upload_fileobj(requests.get(link, stream=True).raw)`` of a fresh link
  of the same log (no verification); ``--runs`` alternating runs of each, medians compared;
* memory: peak RSS of the archiving process for a ``--small-mib`` (64) and a ``--size-mib`` log (each
  archive runs in its own subprocess), to show it does not grow with the log size.

Each side imports its libraries before its clock starts (the operator ``s3fs`` and Airflow's filesystem
registry, the baseline ``boto3`` and ``requests``), so both are timed from the same point: the transfer.
Every stored object is read back and hashed (outside the timings). Prints a table; not a pass/fail test.

    .venv/bin/python benchmarks/bench_archive_s3.py [--size-mib 256] [--small-mib 64] [--runs 3] [--tls]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness import run_json_child, start_emulator

ROOT = Path(__file__).resolve().parents[1]
MiB = 1024 * 1024
AK, SK, REGION = "bench-access-key", "bench-secret-key", "us-east-1"
BASELINE = "boto3 upload_fileobj (no verification)"
OPERATOR = "archive operator"


class _NullTI:
    def xcom_push(self, *args: object, **kwargs: object) -> None:
        pass


def _cpu(usage: resource.struct_rusage) -> float:
    return usage.ru_utime + usage.ru_stime


def _client(endpoint: str):  # type: ignore[no-untyped-def]
    import boto3

    return boto3.client(
        "s3", endpoint_url=endpoint, aws_access_key_id=AK, aws_secret_access_key=SK, region_name=REGION
    )


def moto_child(tls_dir: str | None) -> None:
    """Run a moto S3 server on a free loopback port; print its URL; serve until stdin closes.

    With ``tls_dir``, over HTTPS with a self-signed certificate for ``localhost`` written there (the
    clients trust it through ``AWS_CA_BUNDLE``), as S3 is reached in production.
    """
    import threading

    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import make_server, make_ssl_devcert

    ssl_context = make_ssl_devcert(os.path.join(tls_dir, "moto"), host="localhost") if tls_dir else None
    app = DomainDispatcherApplication(create_backend_app)
    server = make_server(
        "127.0.0.1", 0, app, threaded=True, request_handler=MotoRequestHandler, ssl_context=ssl_context
    )
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    print(f"https://localhost:{port}" if tls_dir else f"http://127.0.0.1:{port}", flush=True)
    sys.stdin.read()
    server.shutdown()


def operator_child(job_id: str, destination: str) -> None:
    """Archive one job with the operator in this process; print one JSON line."""
    import logging

    import psutil

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    from airflow_provider_modelarts.operators.modelarts import ModelArtsArchiveTaskLogsOperator

    op = ModelArtsArchiveTaskLogsOperator(
        task_id="bench",
        training_job_id=job_id,
        destination=destination,
        destination_conn_id="aws_bench",
        overwrite=True,
        max_workers=1,
    )
    import s3fs  # noqa: F401  (imported before the clock, as the baseline imports boto3)
    from airflow.sdk.io.fs import has_fs

    has_fs("s3")  # Airflow's one-off provider filesystem discovery, not part of the transfer
    before = psutil.Process().memory_info().rss
    cpu_before = _cpu(resource.getrusage(resource.RUSAGE_SELF))
    start = time.perf_counter()
    result = op.execute({"ti": _NullTI(), "task": None})  # type: ignore[typeddict-item]
    seconds = time.perf_counter() - start
    cpu = _cpu(resource.getrusage(resource.RUSAGE_SELF)) - cpu_before
    task = result["tasks"][0]
    from airflow.providers.common.compat.sdk import ObjectStoragePath

    manifest = json.loads(ObjectStoragePath(result["manifest"], conn_id="aws_bench").read_text())
    out = {
        "transfer_seconds": manifest["tasks"][0]["seconds"],
        "seconds": seconds,
        "cpu": cpu,
        "size": task["size"],
        "sha256": task["sha256"],
        "uri": task["uri"],
        "rss_before": before,
        "rss_peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }
    print(json.dumps(out))


def boto3_child(url: str, endpoint: str, bucket: str, key: str) -> None:
    """The baseline: stream the link's body straight into ``upload_fileobj`` (no verification)."""
    import boto3  # noqa: F401  (imported before the clock, as the operator's side imports s3fs)
    import requests

    start = time.perf_counter()
    with requests.get(url, stream=True, timeout=60) as resp:
        resp.raise_for_status()
        _client(endpoint).upload_fileobj(resp.raw, bucket, key)
    seconds = time.perf_counter() - start
    cpu = _cpu(resource.getrusage(resource.RUSAGE_SELF))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"seconds": seconds, "cpu": cpu, "rss_peak": peak}))


def _run(args: list[str], env: dict[str, str]) -> dict:
    return run_json_child(__file__, args, env)


def _stored_sha256(client, bucket: str, key: str) -> tuple[int, str]:  # type: ignore[no-untyped-def]
    body = client.get_object(Bucket=bucket, Key=key)["Body"]
    sha, size = hashlib.sha256(), 0
    for block in iter(lambda: body.read(4 * MiB), b""):
        sha.update(block)
        size += len(block)
    return size, sha.hexdigest()


def _start_moto(tls_dir: str | None) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [sys.executable, __file__, "--child-moto", tls_dir or ""],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,  # one access-log line per request
        text=True,
    )
    assert proc.stdout is not None
    return proc, proc.stdout.readline().strip()


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--small-mib", type=int, default=64)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--settle", type=float, default=1.0, help="seconds between timed runs")
    parser.add_argument(
        "--tls", action="store_true", help="moto over HTTPS (self-signed, trusted via AWS_CA_BUNDLE)"
    )
    parser.add_argument("--child-moto", nargs=1, help=argparse.SUPPRESS)
    parser.add_argument("--child-operator", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--child-boto3", nargs=4, help=argparse.SUPPRESS)
    return parser.parse_args()


def _scenario(jobs: tuple[tuple[str, int], ...]) -> dict:
    return {
        "jobs": [
            {
                "id": job_id,
                "name": job_id,
                "timeline": [{"phase": "Completed", "at": 0}],
                "tasks": [{"id": "worker-0", "exit_code": 0, "log": {"generate": {"size": size, "seed": 7}}}],
            }
            for job_id, size in jobs
        ]
    }


def _child_env(home: str, conn_json: str, endpoint: str, *, tls: bool = False) -> dict[str, str]:
    """The children's environment; with ``tls``, trusting moto's certificate (written in ``home``)."""
    aws_conn = {
        "conn_type": "aws",
        "login": AK,
        "password": SK,
        "extra": {"endpoint_url": endpoint, "region_name": REGION},
    }
    return {
        **os.environ,
        "AIRFLOW_HOME": home,
        "AIRFLOW_CONN_MODELARTS_DEFAULT": conn_json,
        "AIRFLOW_CONN_AWS_BENCH": json.dumps(aws_conn),
        "AWS_ACCESS_KEY_ID": AK,
        "AWS_SECRET_ACCESS_KEY": SK,
        "AWS_DEFAULT_REGION": REGION,
        "PYTHONPATH": str(ROOT),
        **({"AWS_CA_BUNDLE": os.path.join(home, "moto.crt")} if tls else {}),
    }


def _measure(
    args: argparse.Namespace, env: dict[str, str], endpoint: str, expected: str
) -> tuple[dict, dict, list]:
    """Alternate the baseline and the operator ``--runs`` times; then the small log once."""
    from airflow_provider_modelarts.hooks.modelarts import ModelArtsHook

    big = args.size_mib * MiB
    hook = ModelArtsHook()
    client = _client(endpoint)
    bucket = "bench-archive"
    client.create_bucket(Bucket=bucket)

    def check(key: str) -> None:
        size, digest = _stored_sha256(client, bucket, key)
        if (size, digest) != (big, expected):
            raise SystemExit(
                f"s3://{bucket}/{key}: {size} bytes, sha256 {digest}; expected {big}, {expected}"
            )
        client.delete_object(Bucket=bucket, Key=key)

    def baseline() -> dict:
        url = hook.get_task_log_url("bench-big", "worker-0", download=True)
        res = _run(["--child-boto3", url, endpoint, bucket, "boto3/worker-0.log"], env)
        check("boto3/worker-0.log")
        return res

    def operator() -> dict:
        res = _run(["--child-operator", "bench-big", f"s3://{bucket}/op"], env)
        if (res["size"], res["sha256"]) != (big, expected):
            raise SystemExit(f"archive mismatch: {res}")
        check("op/bench-big/worker-0.log")
        return res

    rows: dict[str, list[dict]] = {BASELINE: [], OPERATOR: []}
    steps = {BASELINE: baseline, OPERATOR: operator}
    loads = [os.getloadavg()[0]]
    for i in range(args.runs):
        for name in list(steps)[:: -1 if i % 2 else 1]:
            time.sleep(args.settle)
            res = steps[name]()
            rows[name].append(res)
            print(f"run {i + 1} {name}: {res['seconds']:.2f}s cpu {res['cpu']:.2f}s", flush=True)
        loads.append(os.getloadavg()[0])
    small = _run(["--child-operator", "bench-small", f"s3://{bucket}/small"], env)
    return rows, small, loads


def _report(args: argparse.Namespace, rows: dict[str, list[dict]], small: dict, loads: list[float]) -> None:
    big = args.size_mib * MiB

    def med(name: str, key: str) -> float:
        return statistics.median(r[key] for r in rows[name])

    print()
    print(
        f"Log size {args.size_mib} MiB to s3:// on moto ({'https' if args.tls else 'http'}), "
        f"{args.runs} alternating runs; 1-min load "
        f"{min(loads):.2f}-{max(loads):.2f} on {os.cpu_count()} CPUs"
    )
    print(f"{'':42}{'median s':>9}{'MB/s':>8}{'best s':>8}{'cpu s':>7}{'peak RSS MB':>12}   runs (s)")
    for name, runs in rows.items():
        times = ", ".join(f"{r['seconds']:.2f}" for r in runs)
        print(
            f"{name:42}{med(name, 'seconds'):>9.2f}{big / med(name, 'seconds') / 1e6:>8.0f}"
            f"{min(r['seconds'] for r in runs):>8.2f}{med(name, 'cpu'):>7.2f}"
            f"{max(r['rss_peak'] for r in runs) / 1e6:>12.1f}   {times}"
        )
    copy_s = med(OPERATOR, "transfer_seconds")
    print(f"{'  of which receive + upload (to the commit)':42}{copy_s:>9.2f}{big / copy_s / 1e6:>8.0f}")
    ratio = med(BASELINE, "seconds") / med(OPERATOR, "seconds")
    print(f"throughput ratio (operator / boto3 upload_fileobj, medians): {ratio:.2f}x   (target >= 1.0x)")
    print(f"{'log size':>10}{'RSS before (MB)':>18}{'peak RSS (MB)':>16}")
    print(f"{args.small_mib:>6} MiB{small['rss_before'] / 1e6:>18.1f}{small['rss_peak'] / 1e6:>16.1f}")
    big_before = max(r["rss_before"] for r in rows[OPERATOR])
    big_peak = max(r["rss_peak"] for r in rows[OPERATOR])
    print(f"{args.size_mib:>6} MiB{big_before / 1e6:>18.1f}{big_peak / 1e6:>16.1f}")


def main() -> None:
    args = _parse()
    if args.child_moto:
        return moto_child(args.child_moto[0] or None)
    if args.child_operator:
        return operator_child(*args.child_operator)
    if args.child_boto3:
        return boto3_child(*args.child_boto3)

    home = tempfile.mkdtemp(prefix="bench-s3-airflow-home-")
    scenario_file = Path(home) / "scenario.json"
    scenario_file.write_text(
        json.dumps(_scenario((("bench-big", args.size_mib * MiB), ("bench-small", args.small_mib * MiB))))
    )
    from airflow_provider_modelarts.emulator import GeneratedLog

    expected = GeneratedLog(args.size_mib * MiB, seed=7).sha256()
    emu, conn_json = start_emulator(scenario_file)
    moto, endpoint = _start_moto(home if args.tls else None)
    try:
        env = _child_env(home, conn_json, endpoint, tls=args.tls)
        names = ("AIRFLOW_HOME", "AIRFLOW_CONN_MODELARTS_DEFAULT", "AWS_CA_BUNDLE")
        os.environ.update({k: env[k] for k in names if k in env})
        rows, small, loads = _measure(args, env, endpoint, expected)
    finally:
        for proc in (emu, moto):
            proc.terminate()
            proc.wait(timeout=30)
        shutil.rmtree(home, ignore_errors=True)
    _report(args, rows, small, loads)


if __name__ == "__main__":
    main()
