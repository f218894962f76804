"""How fast the emulator's OBS side serves a large generated log on loopback.

Prints MB/s for ``curl -o /dev/null`` and for a Python ``requests`` consumer reading 1 MiB chunks, plus
the time to compute the log's SHA-256 (done once, cached). Usage::

    python benchmarks/bench_emulator_serve.py [--size 1GiB] [--runs 3]
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import subprocess
import time

import requests

from airflow_provider_modelarts.emulator import (
    DEFAULT_DOMAIN,
    DEFAULT_IAM_PASSWORD,
    DEFAULT_IAM_USER,
    ModelArtsEmulator,
)
from airflow_provider_modelarts.emulator.logs import parse_size

MB = 1_000_000


def _log_url(emu: ModelArtsEmulator) -> str:
    body = {
        "auth": {
            "identity": {
                "methods": ["password"],
                "password": {
                    "user": {
                        "name": DEFAULT_IAM_USER,
                        "password": DEFAULT_IAM_PASSWORD,
                        "domain": {"name": DEFAULT_DOMAIN},
                    }
                },
            },
            "scope": {"project": {"id": emu.project_id}},
        }
    }
    token = requests.post(f"{emu.url}/v3/auth/tokens?nocatalog=true", json=body, timeout=10).headers[
        "X-Subject-Token"
    ]
    resp = requests.get(
        f"{emu.url}/v2/{emu.project_id}/training-jobs/bench/tasks/worker-0/logs/url",
        headers={"X-Auth-Token": token, "Content-Type": "application/octet-stream"},
        timeout=10,
    )
    resp.raise_for_status()
    return resp.json()["obs_url"]


def _curl(url: str, size: int) -> float:
    started = time.perf_counter()
    out = subprocess.run(
        ["curl", "-sS", "-o", "/dev/null", "-w", "%{size_download}", url],
        capture_output=True,
        text=True,
        check=True,
    )
    elapsed = time.perf_counter() - started
    if int(out.stdout) != size:
        raise RuntimeError(f"curl got {out.stdout} bytes, expected {size}")
    return size / elapsed / MB


def _requests(url: str, size: int, *, digest: bool) -> float:
    started = time.perf_counter()
    total = 0
    sha = hashlib.sha256()
    with requests.get(url, stream=True, timeout=30) as resp:
        resp.raise_for_status()
        for chunk in resp.iter_content(1024 * 1024):
            total += len(chunk)
            if digest:
                sha.update(chunk)
    elapsed = time.perf_counter() - started
    if total != size:
        raise RuntimeError(f"requests got {total} bytes, expected {size}")
    return size / elapsed / MB


def main() -> None:
    """Run the benchmark and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="1GiB", help="log size (default 1GiB)")
    parser.add_argument("--runs", type=int, default=3, help="downloads per consumer (default 3)")
    args = parser.parse_args()
    size = parse_size(args.size)
    scenario = {
        "jobs": [
            {"id": "bench", "tasks": [{"id": "worker-0", "log": {"generate": {"size": size, "seed": 1}}}]}
        ]
    }
    with ModelArtsEmulator(scenario) as emu:
        url = _log_url(emu)
        print(f"log size: {size} bytes ({size / 2**30:.2f} GiB)")
        if shutil.which("curl"):
            rates = [_curl(url, size) for _ in range(args.runs)]
            print(
                f"curl -o /dev/null: best {max(rates):.0f} MB/s, median {sorted(rates)[len(rates) // 2]:.0f} MB/s"
            )
        rates = [_requests(url, size, digest=False) for _ in range(args.runs)]
        print(
            f"requests iter_content(1 MiB): best {max(rates):.0f} MB/s, median {sorted(rates)[len(rates) // 2]:.0f} MB/s"
        )
        rate = _requests(url, size, digest=True)
        print(f"requests + sha256: {rate:.0f} MB/s")
        started = time.perf_counter()
        emu.log_sha256("bench", "worker-0")
        print(f"emulator log_sha256 (first call): {time.perf_counter() - started:.2f} s")
        print(f"bytes served: {emu.counters['bytes_served']}")


if __name__ == "__main__":
    main()
