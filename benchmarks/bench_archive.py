"""Benchmark: ModelArtsArchiveTaskLogsOperator vs ``curl -o`` on one big log, plus peak RSS by log size.

Against the local emulator on loopback (in its own process, as a remote OBS would be):

* throughput: one generated log (default 1 GiB) archived to a ``file://`` destination by the operator,
  against ``curl -o FILE`` of a fresh download link of the same log; ``--runs`` alternating runs of each
  (default 3), medians compared;
* memory: peak RSS of the archiving process for a 64 MiB and a 1 GiB log (each archive runs in its own
  subprocess; RSS read from ``ru_maxrss``), to show it does not grow with the log size.

Prints a table; it is not a pass/fail test. Bars from issue 3: ratio >= 0.8x curl, peak RSS <= 200 MB.

    .venv/bin/python benchmarks/bench_archive.py [--size-mib 1024] [--small-mib 64] [--runs 3]
"""

from __future__ import annotations

import argparse
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

ROOT = Path(__file__).resolve().parents[1]
MiB = 1024 * 1024


class _NullTI:
    def xcom_push(self, *args: object, **kwargs: object) -> None:
        pass


class _NoHash:
    def update(self, data: object) -> None:
        pass

    def hexdigest(self) -> str:
        return "ablated"


def child(job_id: str, destination: str, chunk_size: int, no_sha256: bool = False) -> None:
    """Archive one job in this process and print one JSON line with timings and peak RSS."""
    import logging

    import psutil

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    from airflow_provider_modelarts import transfer
    from airflow_provider_modelarts.operators.modelarts import ModelArtsArchiveTaskLogsOperator

    if no_sha256:  # ablation only: shows what the sha256 costs on this machine
        init = transfer._Pipeline.__init__

        def init_without_sha256(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            init(self, *args, **kwargs)
            self.sha256 = _NoHash()

        transfer._Pipeline.__init__ = init_without_sha256  # type: ignore[method-assign]

    op = ModelArtsArchiveTaskLogsOperator(
        task_id="bench",
        training_job_id=job_id,
        destination=destination,
        overwrite=True,
        max_workers=1,
        chunk_size=chunk_size,
    )
    from airflow.sdk.io.fs import has_fs

    has_fs("file")  # Airflow's one-off provider filesystem discovery, not part of the transfer
    before = psutil.Process().memory_info().rss
    start = time.perf_counter()
    result = op.execute({"ti": _NullTI(), "task": None})  # type: ignore[arg-type]
    seconds = time.perf_counter() - start
    manifest = json.loads(Path(result["manifest"].removeprefix("file://")).read_text())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    task = result["tasks"][0]
    print(
        json.dumps(
            {
                "seconds": seconds,
                "transfer_seconds": manifest["tasks"][0]["seconds"],
                "size": task["size"],
                "sha256": task["sha256"],
                "rss_before": before,
                "rss_peak": peak,
            }
        )
    )


def run_child(
    env: dict[str, str], job_id: str, destination: str, chunk_size: int, no_sha256: bool = False
) -> dict:
    proc = subprocess.run(
        [sys.executable, __file__, "--child", job_id, destination, "--chunk-size", str(chunk_size)]
        + (["--no-sha256"] if no_sha256 else []),
        env=env,
        cwd=str(ROOT),
        capture_output=True,
        text=True,
        timeout=1800,
    )
    if proc.returncode != 0:
        raise SystemExit(f"archive subprocess failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_curl(url: str, out: Path) -> float:
    start = time.perf_counter()
    subprocess.run(["curl", "-sS", "-f", "-o", str(out), url], check=True, timeout=1800)
    return time.perf_counter() - start


def run_curl_sha256(url: str, out: Path) -> tuple[float, str]:
    """``curl URL | tee FILE | sha256sum``: the same work as the operator (store and hash), for reference."""
    start = time.perf_counter()
    proc = subprocess.run(
        f"curl -sS -f '{url}' | tee '{out}' | sha256sum",
        shell=True,
        check=True,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    return time.perf_counter() - start, proc.stdout.split()[0]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--small-mib", type=int, default=64)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--chunk-size", type=int, default=4 * MiB)
    parser.add_argument("--workdir", default=None, help="where the copies go (default: a temp dir)")
    parser.add_argument(
        "--ablation",
        action="store_true",
        help="also time the operator with sha256 switched off (diagnosis only)",
    )
    parser.add_argument("--child", nargs=2, metavar=("JOB_ID", "DESTINATION"), help=argparse.SUPPRESS)
    parser.add_argument("--no-sha256", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], args.child[1], args.chunk_size, args.no_sha256)
        return
    if not shutil.which("curl"):
        raise SystemExit("curl is needed for the comparison")

    own_home = None
    if "AIRFLOW_HOME" not in os.environ:
        own_home = os.environ["AIRFLOW_HOME"] = tempfile.mkdtemp(prefix="bench-airflow-home-")
    big, small = args.size_mib * MiB, args.small_mib * MiB
    scenario = {
        "jobs": [
            {
                "id": job_id,
                "name": job_id,
                "timeline": [{"phase": "Completed", "at": 0}],
                "tasks": [{"id": "worker-0", "exit_code": 0, "log": {"generate": {"size": size, "seed": 7}}}],
            }
            for job_id, size in (("bench-big", big), ("bench-small", small))
        ]
    }
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-archive-"))
    work.mkdir(parents=True, exist_ok=True)
    scenario_file = work / "scenario.json"
    scenario_file.write_text(json.dumps(scenario))
    from airflow_provider_modelarts.emulator import GeneratedLog

    # The emulator runs in its own process, like a remote OBS would, so it shares no GIL with anyone.
    emu_proc = subprocess.Popen(
        [sys.executable, "-m", "airflow_provider_modelarts.emulator", "--scenario", str(scenario_file)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=str(ROOT),
    )
    try:
        conn_json = ""
        assert emu_proc.stdout is not None
        for line in emu_proc.stdout:
            if line.startswith("AIRFLOW_CONN_MODELARTS_DEFAULT="):
                conn_json = line.split("=", 1)[1].strip().strip("'")
                break
        if not conn_json:
            raise SystemExit("the emulator did not start")
        env = {**os.environ, "AIRFLOW_CONN_MODELARTS_DEFAULT": conn_json, "PYTHONPATH": str(ROOT)}
        os.environ["AIRFLOW_CONN_MODELARTS_DEFAULT"] = conn_json
        from airflow_provider_modelarts.hooks.modelarts import ModelArtsHook

        hook = ModelArtsHook()
        expected_sha = GeneratedLog(big, seed=7).sha256()

        curl_times: list[float] = []
        curl_sha_times: list[float] = []
        op_times: list[float] = []
        op_runs: list[dict] = []
        ablated: list[float] = []
        for i in range(args.runs):
            order = ("curl", "op", "curl+sha") if i % 2 == 0 else ("op", "curl", "curl+sha")
            if args.ablation:
                order += ("op-no-sha256",)
            for kind in order:
                if kind == "op-no-sha256":
                    dest = work / "ablation"
                    res = run_child(env, "bench-big", f"file://{dest}", args.chunk_size, no_sha256=True)
                    ablated.append(res["seconds"])
                    shutil.rmtree(dest)
                    print(f"run {i + 1} {kind}: {res['seconds']:.2f}s", flush=True)
                    continue
                if kind == "curl+sha":
                    out = work / "curl-sha.log"
                    url = hook.get_task_log_url("bench-big", "worker-0", download=True)
                    seconds, digest = run_curl_sha256(url, out)
                    if digest != expected_sha:
                        raise SystemExit("curl | sha256sum gave a different digest")
                    curl_sha_times.append(seconds)
                    out.unlink()
                    print(f"run {i + 1} {kind}: {seconds:.2f}s", flush=True)
                    continue
                if kind == "curl":
                    out = work / "curl.log"
                    url = hook.get_task_log_url("bench-big", "worker-0", download=True)
                    curl_times.append(run_curl(url, out))
                    if out.stat().st_size != big:
                        raise SystemExit(f"curl got {out.stat().st_size} bytes, expected {big}")
                    out.unlink()
                else:
                    dest = work / "op"
                    res = run_child(env, "bench-big", f"file://{dest}", args.chunk_size)
                    if res["sha256"] != expected_sha or res["size"] != big:
                        raise SystemExit(f"archive mismatch: {res}")
                    op_times.append(res["seconds"])
                    op_runs.append(res)
                    shutil.rmtree(dest)
                print(
                    f"run {i + 1} {kind}: {(curl_times if kind == 'curl' else op_times)[-1]:.2f}s", flush=True
                )

        small_res = run_child(env, "bench-small", f"file://{work / 'small'}", args.chunk_size)
        shutil.rmtree(work / "small")
    finally:
        emu_proc.terminate()
        emu_proc.wait(timeout=30)
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)

    if own_home:
        shutil.rmtree(own_home, ignore_errors=True)
    curl_med, op_med = statistics.median(curl_times), statistics.median(op_times)
    curl_rate, op_rate = big / curl_med / 1e6, big / op_med / 1e6
    big_rss = max(r["rss_peak"] for r in op_runs)
    print()
    print(
        f"Log size {args.size_mib} MiB, {args.runs} alternating runs each, chunk {args.chunk_size // 1024} KiB"
    )
    print(f"{'':28}{'median s':>10}{'MB/s':>10}{'runs (s)':>28}")
    print(
        f"{'curl -o':28}{curl_med:>10.2f}{curl_rate:>10.1f}{'  ' + ', '.join(f'{t:.2f}' for t in curl_times):>28}"
    )
    print(
        f"{'archive operator':28}{op_med:>10.2f}{op_rate:>10.1f}{'  ' + ', '.join(f'{t:.2f}' for t in op_times):>28}"
    )
    sha_med = statistics.median(curl_sha_times)
    sha_runs = "  " + ", ".join(f"{t:.2f}" for t in curl_sha_times)
    print(f"{'curl | tee | sha256sum':28}{sha_med:>10.2f}{big / sha_med / 1e6:>10.1f}{sha_runs:>28}")
    if ablated:
        abl_med = statistics.median(ablated)
        abl_runs = "  " + ", ".join(f"{t:.2f}" for t in ablated)
        print(f"{'operator, sha256 off (diag)':28}{abl_med:>10.2f}{big / abl_med / 1e6:>10.1f}{abl_runs:>28}")
    xfer_med = statistics.median(r["transfer_seconds"] for r in op_runs)
    print(f"{'  of which the log transfer':28}{xfer_med:>10.2f}{big / xfer_med / 1e6:>10.1f}")
    print(f"throughput ratio (operator execute() / curl): {op_rate / curl_rate:.2f}x   (bar >= 0.80x)")
    print(f"throughput ratio (operator execute() / curl | tee | sha256sum): {sha_med / op_med:.2f}x")
    print()
    print(f"{'log size':>10}{'RSS before (MB)':>18}{'peak RSS (MB)':>16}")
    print(
        f"{args.small_mib:>6} MiB{small_res['rss_before'] / 1e6:>18.1f}{small_res['rss_peak'] / 1e6:>16.1f}"
    )
    print(f"{args.size_mib:>6} MiB{op_runs[0]['rss_before'] / 1e6:>18.1f}{big_rss / 1e6:>16.1f}")
    print(
        f"peak RSS growth {args.small_mib} MiB -> {args.size_mib} MiB: {(big_rss - small_res['rss_peak']) / 1e6:+.1f} MB"
        "   (bar: peak <= 200 MB)"
    )
    print(f"sha256 of every archived copy == emulator's: {expected_sha}")


if __name__ == "__main__":
    main()
