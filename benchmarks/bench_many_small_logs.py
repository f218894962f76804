"""Many small logs in one process: 2 x 500 tasks of 1 KiB archived by the archive operator, logs/s per half.

The emulator runs in its own process. Each variant runs in a fresh Python process (a fresh secret masker):

* ``operator``: the archive operator as shipped (its worker hooks keep their log links private, so the
  masker's size does not change from one log to the next);
* ``baseline``: the same operator with worker hooks that register every log link with Airflow's secret
  masker (what every link cost before), which recompiles one pattern over all secrets on each add.

Besides logs/s, each half reports how many secrets were registered with the masker per log.

Usage: ``.venv/bin/python benchmarks/bench_many_small_logs.py [--tasks 500] [--workers 4]``
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from harness import start_emulator  # noqa: E402

os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="bench-airflow-home-"))
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")


def scenario(tasks: int) -> dict:
    return {
        "jobs": [
            {
                "id": f"many-{half}",
                "timeline": [{"phase": "Completed", "at": 0}],
                "tasks": [
                    {"id": f"worker-{i}", "exit_code": 0, "log": {"generate": {"size": 1024, "seed": i}}}
                    for i in range(tasks)
                ],
            }
            for half in ("a", "b")
        ]
    }


def run_variant(variant: str, dest: str, workers: int) -> dict:
    """One process: archive job ``many-a`` then ``many-b``; time each."""
    from airflow_provider_modelarts import redaction
    from airflow_provider_modelarts.hooks.modelarts import ModelArtsHook
    from airflow_provider_modelarts.operators.modelarts import ModelArtsArchiveTaskLogsOperator

    class RegisteringOperator(ModelArtsArchiveTaskLogsOperator):
        def new_hook(self) -> ModelArtsHook:
            return ModelArtsHook(modelarts_conn_id=self.modelarts_conn_id, mask_log_links=True)

    cls = RegisteringOperator if variant == "baseline" else ModelArtsArchiveTaskLogsOperator
    registered = [0]
    real_mask = redaction.mask_secret

    def counting_mask(secret: str) -> None:
        registered[0] += 1
        real_mask(secret)

    halves = []
    with mock.patch.object(redaction, "mask_secret", counting_mask):
        for half in ("a", "b"):
            op = cls(
                task_id=f"archive_{half}",
                training_job_id=f"many-{half}",
                destination=f"{dest}/{variant}",
                max_workers=workers,
                wait_for_completion=False,
            )
            before = registered[0]
            t0, cpu0 = time.perf_counter(), time.process_time()
            result = op.execute({"ti": mock.MagicMock(), "task": None})  # type: ignore[arg-type,typeddict-item]
            halves.append(
                {
                    "logs": len(result["tasks"]),
                    "wall": time.perf_counter() - t0,
                    "cpu": time.process_time() - cpu0,
                    "registered": registered[0] - before,
                }
            )
    return {"variant": variant, "halves": halves}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=500, help="tasks per job (two jobs)")
    parser.add_argument("--workers", type=int, default=4, help="the operator's max_workers (default 4)")
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--dest", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(run_variant(args.variant, args.dest, args.workers)))
        return 0

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "scenario.json"
        path.write_text(json.dumps(scenario(args.tasks)))
        proc, conn = start_emulator(path)
        results = []
        try:
            env = {**os.environ, "AIRFLOW_CONN_MODELARTS_DEFAULT": conn}
            for variant in ("operator", "baseline"):
                out = subprocess.run(
                    [
                        sys.executable,
                        __file__,
                        "--variant",
                        variant,
                        "--dest",
                        f"file://{tmp}/out",
                        "--workers",
                        str(args.workers),
                    ],
                    env=env,
                    capture_output=True,
                    text=True,
                    check=True,
                    cwd=ROOT,
                )
                results.append(json.loads(out.stdout.strip().splitlines()[-1]))
        finally:
            proc.terminate()
            proc.wait(10)

    print(f"2 jobs x {args.tasks} tasks of 1 KiB, one process per variant, max_workers={args.workers}")
    header = f"{'Variant':<44} {'half':>4} {'logs':>5} {'wall s':>7} {'logs/s':>7} {'CPU ms/log':>11} {'masker adds/log':>16}"
    print(header)
    print("-" * len(header))
    names = {"operator": "operator (worker links private)", "baseline": "baseline (every link registered)"}
    for r in results:
        for i, h in enumerate(r["halves"]):
            print(
                f"{names[r['variant']]:<44} {i + 1:>4} {h['logs']:>5} {h['wall']:>7.2f} {h['logs'] / h['wall']:>7.1f} "
                f"{1000 * h['cpu'] / h['logs']:>11.2f} {h['registered'] / h['logs']:>16.2f}"
            )
    for r in results:
        first, second = (h["logs"] / h["wall"] for h in r["halves"])
        print(f"{names[r['variant']]}: second half at {100 * second / first:.0f}% of the first")
    op = results[0]["halves"]
    ok = all(h["logs"] / h["wall"] >= 100 for h in op) and op[1]["wall"] <= op[0]["wall"] * 1.10
    print(f"Target (second half within 10% of the first, >= 100 logs/s): {'met' if ok else 'NOT met'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
