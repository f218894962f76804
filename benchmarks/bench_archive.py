"""Benchmark: ModelArtsArchiveTaskLogsOperator vs ``curl -o`` on one big log, plus peak RSS by log size.

Against the local emulator on loopback (in its own process, as a remote OBS would be):

* throughput: one generated log (default 1 GiB) archived to a ``file://`` destination by the operator,
  against ``curl -o FILE`` of a fresh download link of the same log; ``--runs`` alternating runs of each
  (default 3), medians compared;
* memory: peak RSS of the archiving process for a 64 MiB and a 1 GiB log (each archive runs in its own
  subprocess; RSS read from ``ru_maxrss``), to show it does not grow with the log size.

Prints a table next to the bars it is read against; it is not a pass/fail test.

Fairness: every timed download (curl or operator) starts ``--settle`` seconds after the previous copy was
deleted. On a VM with free page reporting (virtio-balloon), page-cache pages freed shortly before are
still backed by the host and cheaper to write into than older ones; curl starts at once while the
operator's process first imports Airflow, so without an equal pause curl always wrote into the cheap pages. CPU seconds (user+system) of the downloader and of the
emulator are printed too: unlike wall time they hardly depend on what else runs on the machine.
The reference rows (``--ceilings``) show what is physically possible here: curl with a real (OpenSSL,
SHA-NI) sha256 on a pipe, and a bare Python recv+sha256 loop with no write at all.

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
from collections.abc import Callable
from pathlib import Path

from harness import run_json_child, start_emulator

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


def _cpu(usage: resource.struct_rusage) -> float:
    return usage.ru_utime + usage.ru_stime


def recv_hash_child(url: str, chunk_size: int) -> None:
    """Ceiling: raw socket ``recv_into`` + sha256 on a helper thread (the operator's shape, no write)."""
    import hashlib
    import socket
    from concurrent.futures import ThreadPoolExecutor
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    start = time.perf_counter()
    sock = socket.create_connection((parts.hostname, parts.port))
    target = f"{parts.path}?{parts.query}" if parts.query else parts.path
    sock.sendall(f"GET {target} HTTP/1.1\r\nHost: {parts.netloc}\r\nConnection: close\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)
    sha = hashlib.sha256()
    buffers = [memoryview(bytearray(chunk_size)) for _ in range(2)]
    size = 0
    with ThreadPoolExecutor(1) as pool:
        pending = None
        turn = 0
        while True:
            buf = buffers[turn]
            turn ^= 1
            got = 0
            while got < chunk_size:
                n = sock.recv_into(buf[got:])
                if not n:
                    break
                got += n
            if pending is not None:
                pending.result()
            if not got:
                break
            pending = pool.submit(sha.update, buf[:got])
            size += got
    sock.close()
    seconds = time.perf_counter() - start
    cpu = _cpu(resource.getrusage(resource.RUSAGE_SELF))
    print(json.dumps({"seconds": seconds, "size": size, "sha256": sha.hexdigest(), "cpu": cpu}))


def child(job_id: str, destination: str, chunk_size: int, no_sha256: bool = False) -> None:
    """Archive one job in this process and print one JSON line with timings and peak RSS."""
    import logging

    import psutil

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    from airflow_provider_modelarts.archiving import pipeline as transfer
    from airflow_provider_modelarts.operators.modelarts import ModelArtsArchiveTaskLogsOperator

    if no_sha256:  # ablation only: shows what the sha256 costs on this machine
        init = transfer.Pipeline.__init__

        def init_without_sha256(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            init(self, *args, **kwargs)
            self.sha256 = _NoHash()

        transfer.Pipeline.__init__ = init_without_sha256  # type: ignore[method-assign]

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
    cpu_before = _cpu(resource.getrusage(resource.RUSAGE_SELF))
    start = time.perf_counter()
    result = op.execute({"ti": _NullTI(), "task": None})  # type: ignore[typeddict-item]
    seconds = time.perf_counter() - start
    cpu = _cpu(resource.getrusage(resource.RUSAGE_SELF)) - cpu_before
    manifest = json.loads(Path(result["manifest"].removeprefix("file://")).read_text())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    task = result["tasks"][0]
    print(
        json.dumps(
            {
                "seconds": seconds,
                "cpu": cpu,
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
    args = ["--child", job_id, destination, "--chunk-size", str(chunk_size)]
    return run_json_child(__file__, args + (["--no-sha256"] if no_sha256 else []), env)


def run_curl(url: str, out: Path) -> tuple[float, float]:
    """Return wall seconds and CPU seconds of ``curl -o``."""
    before = _cpu(resource.getrusage(resource.RUSAGE_CHILDREN))
    start = time.perf_counter()
    subprocess.run(["curl", "-sS", "-f", "-o", str(out), url], check=True, timeout=1800)
    seconds = time.perf_counter() - start
    return seconds, _cpu(resource.getrusage(resource.RUSAGE_CHILDREN)) - before


def run_shell_sha(cmd: str) -> tuple[float, str]:
    start = time.perf_counter()
    proc = subprocess.run(cmd, shell=True, check=True, capture_output=True, text=True, timeout=1800)
    return time.perf_counter() - start, proc.stdout.split()[0]


def _parser() -> argparse.ArgumentParser:
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
    parser.add_argument(
        "--settle",
        type=float,
        default=3.0,
        help="seconds to wait after deleting a copy before the next timed download (default 3)",
    )
    parser.add_argument(
        "--ceilings",
        action="store_true",
        help="also time curl | openssl sha256 and a bare Python recv+sha256 loop (no write)",
    )
    parser.add_argument("--child-recv-hash", metavar="URL", help=argparse.SUPPRESS)
    parser.add_argument("--child", nargs=2, metavar=("JOB_ID", "DESTINATION"), help=argparse.SUPPRESS)
    parser.add_argument("--no-sha256", action="store_true", help=argparse.SUPPRESS)
    return parser


def _write_scenario(work: Path, big: int, small: int) -> Path:
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
    scenario_file = work / "scenario.json"
    scenario_file.write_text(json.dumps(scenario))
    return scenario_file


class _Steps:
    """The timed downloads of one benchmark run, each returning wall and CPU seconds."""

    def __init__(self, args: argparse.Namespace, *, work: Path, env: dict[str, str], big: int) -> None:
        from airflow_provider_modelarts.emulator import GeneratedLog
        from airflow_provider_modelarts.hooks.modelarts import ModelArtsHook

        self.args = args
        self.work = work
        self.env = env
        self.big = big
        self.hook = ModelArtsHook()
        self.expected_sha = GeneratedLog(big, seed=7).sha256()
        self.op_runs: list[dict] = []
        self.tee_sha = work / "curl-sha.log"

    def fresh_url(self) -> str:
        return self.hook.get_task_log_url("bench-big", "worker-0", download=True)

    def curl_o(self) -> tuple[float, float]:
        out = self.work / "curl.log"
        seconds, cpu = run_curl(self.fresh_url(), out)
        if out.stat().st_size != self.big:
            raise SystemExit(f"curl got {out.stat().st_size} bytes, expected {self.big}")
        out.unlink()
        return seconds, cpu

    def operator(self, no_sha256: bool = False) -> tuple[float, float]:
        dest = self.work / "op"
        res = run_child(self.env, "bench-big", f"file://{dest}", self.args.chunk_size, no_sha256=no_sha256)
        if not no_sha256:
            if res["sha256"] != self.expected_sha or res["size"] != self.big:
                raise SystemExit(f"archive mismatch: {res}")
            self.op_runs.append(res)
        shutil.rmtree(dest)
        return res["seconds"], res["cpu"]

    def shell_sha(self, cmd: str, out: Path | None) -> tuple[float, float]:
        before = _cpu(resource.getrusage(resource.RUSAGE_CHILDREN))
        seconds, digest = run_shell_sha(cmd)
        if digest != self.expected_sha:
            raise SystemExit(f"{cmd!r} gave a different digest")
        if out is not None:
            out.unlink()
        return seconds, _cpu(resource.getrusage(resource.RUSAGE_CHILDREN)) - before

    def recv_hash(self) -> tuple[float, float]:
        command = [sys.executable, __file__, "--child-recv-hash", self.fresh_url()]
        command += ["--chunk-size", str(self.args.chunk_size)]
        proc = subprocess.run(command, capture_output=True, text=True, check=True, timeout=1800)
        res = json.loads(proc.stdout.strip().splitlines()[-1])
        if res["sha256"] != self.expected_sha:
            raise SystemExit("the recv+sha256 loop gave a different digest")
        return res["seconds"], res["cpu"]

    def table(self) -> dict[str, Callable[[], tuple[float, float]]]:
        """The steps by name, curl and the operator first."""
        tee = self.tee_sha
        steps: dict[str, Callable[[], tuple[float, float]]] = {
            "curl -o": self.curl_o,
            "archive operator": self.operator,
            "curl | tee | sha256sum": lambda: self.shell_sha(
                f"curl -sS -f '{self.fresh_url()}' | tee '{tee}' | sha256sum", tee
            ),
        }
        if self.args.ceilings:
            steps["curl | tee | openssl sha256"] = lambda: self.shell_sha(
                f"curl -sS -f '{self.fresh_url()}' | tee '{tee}' | openssl dgst -sha256 -r", tee
            )
            steps["curl | openssl sha256 (no write)"] = lambda: self.shell_sha(
                f"curl -sS -f '{self.fresh_url()}' | openssl dgst -sha256 -r", None
            )
            steps["python recv+sha256 (no write)"] = self.recv_hash
        if self.args.ablation:
            steps["operator, sha256 off (diag)"] = lambda: self.operator(no_sha256=True)
        return steps


Rows = dict[str, list[tuple[float, float, float]]]
"""Step name -> [(seconds, cpu, emulator cpu)]."""


def _run_steps(args: argparse.Namespace, steps: _Steps, emu_pid: int, loads: list[float]) -> Rows:
    import psutil

    emu_ps = psutil.Process(emu_pid)
    rows: Rows = {}
    table = steps.table()
    for i in range(args.runs):
        names = list(table)
        if i % 2:  # alternate which of curl and the operator goes first
            names[0], names[1] = names[1], names[0]
        print(f"run {i + 1}", flush=True)
        for name in names:
            time.sleep(args.settle)
            emu_before = sum(emu_ps.cpu_times()[:2])
            seconds, cpu = table[name]()
            rows.setdefault(name, []).append((seconds, cpu, sum(emu_ps.cpu_times()[:2]) - emu_before))
            print(f"  {name}: {seconds:.2f}s, cpu {cpu:.2f}s, load {os.getloadavg()[0]:.2f}", flush=True)
        loads.append(os.getloadavg()[0])
    return rows


def _report(args: argparse.Namespace, rows: Rows, steps: _Steps, small_res: dict, loads: list[float]) -> None:
    big, op_runs = steps.big, steps.op_runs

    def med(name: str, k: int) -> float:
        return statistics.median(r[k] for r in rows[name])

    curl_med, op_med = med("curl -o", 0), med("archive operator", 0)
    print()
    print(
        f"Log size {args.size_mib} MiB, {args.runs} alternating runs each, chunk {args.chunk_size // 1024} KiB, "
        f"settle {args.settle:g}s; 1-min load average {min(loads):.2f}-{max(loads):.2f} on {os.cpu_count()} CPUs"
    )
    print(f"{'':34}{'median s':>9}{'MB/s':>8}{'best s':>7}{'cpu s':>7}{'emu cpu s':>10}   runs (s)")
    for name, runs in rows.items():
        best = min(r[0] for r in runs)
        print(
            f"{name:34}{med(name, 0):>9.2f}{big / med(name, 0) / 1e6:>8.0f}{best:>7.2f}{med(name, 1):>7.2f}"
            f"{med(name, 2):>10.2f}   {', '.join(f'{r[0]:.2f}' for r in runs)}"
        )
    xfer_med = statistics.median(r["transfer_seconds"] for r in op_runs)
    print(f"{'  operator: of which the transfer':34}{xfer_med:>9.2f}{big / xfer_med / 1e6:>8.0f}")
    print(f"throughput ratio (operator execute() / curl -o): {curl_med / op_med:.2f}x   (bar >= 0.80x)")
    print(f"throughput ratio (operator transfer / curl -o): {curl_med / xfer_med:.2f}x")
    best_ratio = min(r[0] for r in rows["curl -o"]) / min(r[0] for r in rows["archive operator"])
    print(f"throughput ratio of the best runs (least disturbed by other load): {best_ratio:.2f}x")
    big_rss = max(r["rss_peak"] for r in op_runs)
    print()
    print(f"{'log size':>10}{'RSS before (MB)':>18}{'peak RSS (MB)':>16}")
    print(
        f"{args.small_mib:>6} MiB{small_res['rss_before'] / 1e6:>18.1f}{small_res['rss_peak'] / 1e6:>16.1f}"
    )
    print(f"{args.size_mib:>6} MiB{op_runs[0]['rss_before'] / 1e6:>18.1f}{big_rss / 1e6:>16.1f}")
    print(
        f"peak RSS growth {args.small_mib} MiB -> {args.size_mib} MiB: "
        f"{(big_rss - small_res['rss_peak']) / 1e6:+.1f} MB   (bar: peak <= 200 MB)"
    )
    print(f"sha256 of every archived copy == emulator's: {steps.expected_sha}")


def main() -> None:
    args = _parser().parse_args()
    if args.child_recv_hash:
        recv_hash_child(args.child_recv_hash, args.chunk_size)
        return
    if args.child:
        child(args.child[0], args.child[1], args.chunk_size, args.no_sha256)
        return
    if not shutil.which("curl"):
        raise SystemExit("curl is needed for the comparison")

    own_home = None
    if "AIRFLOW_HOME" not in os.environ:
        own_home = os.environ["AIRFLOW_HOME"] = tempfile.mkdtemp(prefix="bench-airflow-home-")
    big, small = args.size_mib * MiB, args.small_mib * MiB
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-archive-"))
    work.mkdir(parents=True, exist_ok=True)
    emu_proc, conn_json = start_emulator(_write_scenario(work, big, small))
    try:
        env = {**os.environ, "AIRFLOW_CONN_MODELARTS_DEFAULT": conn_json, "PYTHONPATH": str(ROOT)}
        os.environ["AIRFLOW_CONN_MODELARTS_DEFAULT"] = conn_json
        steps = _Steps(args, work=work, env=env, big=big)
        loads = [os.getloadavg()[0]]
        rows = _run_steps(args, steps, emu_proc.pid, loads)
        time.sleep(args.settle)
        small_res = run_child(env, "bench-small", f"file://{work / 'small'}", args.chunk_size)
        shutil.rmtree(work / "small")
    finally:
        emu_proc.terminate()
        emu_proc.wait(timeout=30)
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    if own_home:
        shutil.rmtree(own_home, ignore_errors=True)
    _report(args, rows, steps, small_res, loads)


if __name__ == "__main__":
    main()
