"""Live log streaming end to end: ``airflow dags test`` against the emulator, and a restarted trigger.

A two-worker job runs about 15 s and writes a numbered line every 0.2 s per worker. Every line must
appear exactly once, in order, in the task log, while the job runs (several polls print lines).
"""

from __future__ import annotations

import asyncio
import re
from datetime import datetime
from pathlib import Path

import pytest

from tests.fixtures.airflow_cli import airflow_env, dags_test, migrate

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DAGS = Path(__file__).parent / "dags"
LINES = 75
LINE_RE = re.compile(r"^(\S+Z) .*?\[(worker-\d)\] w\d line (\d{5})", re.MULTILINE)


def stream_job(job_id: str, *, running_at: float = 14.0, final: str = "Completed") -> dict:
    return {
        "id": job_id,
        "timeline": [
            {"phase": "Pending", "at": 0},
            {"phase": "Running", "at": running_at},
            {"phase": final, "at": running_at + LINES * 0.2 + 0.5},
        ],
        "tasks": [
            {
                "id": f"worker-{i}",
                "exit_code": 0 if final == "Completed" else i,
                "log": {"lines": {"count": LINES, "every": 0.2, "template": f"w{i} line {{n:05d}}"}},
            }
            for i in range(2)
        ],
    }


@pytest.fixture(scope="module")
def migrated_home(tmp_path_factory):
    home = tmp_path_factory.mktemp("airflow-home")
    migrate(airflow_env(home, dags_folder=DAGS))
    return home


def epoch(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def streamed(output: str) -> dict[str, list[tuple[str, int]]]:
    found: dict[str, list[tuple[str, int]]] = {}
    for stamp, worker, number in LINE_RE.findall(output):
        found.setdefault(worker, []).append((stamp, int(number)))
    return found


def run_stream_dag(home: Path, emu, mode: str, job_id: str, *, succeed: bool = True) -> str:
    env = airflow_env(
        home,
        {
            "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
            "AIRFLOW_CONN_MODELARTS_DEFAULT": emu.connection_json(),
            "STREAM_TEST_MODE": mode,
            "STREAM_TEST_JOB_ID": job_id,
            "STREAM_TEST_TASKS": "worker-0,worker-1",
        },
        dags_folder=DAGS,
    )
    result = dags_test(env, "log_stream_test", check=False)
    output = result.stdout + result.stderr
    if succeed:
        assert result.returncode == 0, output[-6000:]
    return output


@pytest.mark.parametrize("mode", ["poke", "deferrable", "reschedule"])
def test_every_line_once_in_order_while_the_job_runs(mode, migrated_home, emulator_factory):
    emu = emulator_factory({"jobs": []})
    job_id = f"job-stream-{mode}"
    emu.add_job(stream_job(job_id))
    output = run_stream_dag(migrated_home, emu, mode, job_id)
    lines = streamed(output)
    for worker in ("worker-0", "worker-1"):
        numbers = [n for _, n in lines.get(worker, [])]
        assert numbers == list(range(1, LINES + 1)), (worker, numbers, output[-4000:])
    # Live, not dumped at the end: lines were printed by several polls before the job completed.
    ended = emu.job(job_id).terminal_time()
    before_end = {stamp for stamp, _ in lines["worker-0"] if epoch(stamp) < ended}
    assert len({stamp[:21] for stamp in before_end}) >= 2, output[-4000:]
    assert "bytes not shown" not in output
    if mode == "reschedule":
        # Airflow 3.3 keeps the position in task_state_store between pokes: no tail repeat marker.
        assert "no saved log position" not in output


def test_preview_fallback_when_log_links_are_refused(migrated_home, emulator_factory):
    emu = emulator_factory({"jobs": []})
    emu.knobs.refuse_log_url = True
    emu.add_job(stream_job("job-stream-preview"))
    output = run_stream_dag(migrated_home, emu, "poke", "job-stream-preview")
    assert "ModelArts.0108" in output and "reading logs through the preview API" in output
    lines = streamed(output)
    for worker in ("worker-0", "worker-1"):
        assert [n for _, n in lines[worker]] == list(range(1, LINES + 1))
    assert emu.counters["obs_get"] == 0 and emu.counters["preview"] > 0


def test_failure_digest_in_the_task_log(migrated_home, emulator_factory):
    emu = emulator_factory({"jobs": []})
    job = stream_job("job-stream-failed", running_at=8.0, final="Failed")
    job["end_reason"] = "worker-1 process exited with code 1"
    job["events"] = [{"at": 9, "level": "Warning", "source": "K8S", "message": "GPU 3 ECC errors"}]
    job["tasks"][1]["message"] = "CUDA error: an illegal memory access"
    emu.add_job(job)
    output = run_stream_dag(migrated_home, emu, "deferrable", "job-stream-failed", succeed=False)
    assert "=== ModelArts training job job-stream-failed failed: phase Failed ===" in output
    block = output[output.index("=== ModelArts training job job-stream-failed failed") :]
    block = block[: block.index("=== end of failure digest ===")]
    assert "End reason: worker-1 process exited with code 1" in block
    assert "Worker worker-1: exit code 1, CUDA error: an illegal memory access" in block
    assert "Error [Task] Task worker-1 exited with code 1: CUDA error: an illegal memory access" in block
    assert "Warning [K8S] GPU 3 ECC errors" in block
    assert "Last 20 log lines of worker-1:" in block
    assert "  w1 line 00075" in block and "  w1 line 00056" in block and "w1 line 00055" not in block
    assert "Not available" not in block
    # Streamed in full before the digest.
    assert [n for _, n in streamed(output)["worker-1"]] == list(range(1, LINES + 1))


class _Capture:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def info(self, msg: str, *args: object) -> None:
        self.lines.append(msg % args if args else msg)

    debug = warning = info


async def _run_trigger(trigger, *, stop_after: float | None) -> list[dict]:
    events = []

    async def consume() -> None:
        async for event in trigger.run():
            events.append(event.payload)

    if stop_after is None:
        await consume()
    else:
        task = asyncio.ensure_future(consume())
        await asyncio.sleep(stop_after)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    return events


def test_restarted_trigger_repeats_from_the_deferral_position_and_says_so(emulator_factory, monkeypatch):
    from airflow_provider_modelarts.triggers.modelarts import ModelArtsTrainingJobTrigger

    emu = emulator_factory({"jobs": []})
    emu.add_job(stream_job("job-restart", running_at=0.0))
    monkeypatch.setenv("AIRFLOW_CONN_MODELARTS_DEFAULT", emu.connection_json())
    # The cursor the sensor hands over at deferral: the first 10 lines were shown before.
    deferral_state = {
        "version": 1,
        "use_preview": False,
        "cursors": {
            "worker-0": {"offset": 10 * len(b"w0 line 00001\n"), "pending": "", "skip_partial": False}
        },
    }
    kwargs = ModelArtsTrainingJobTrigger(
        training_job_id="job-restart",
        poll_interval=0.5,
        stream_logs=True,
        stream_log_tasks=["worker-0"],
        log_stream_state=deferral_state,
    ).serialize()[1]
    capture = _Capture()
    first = ModelArtsTrainingJobTrigger(**kwargs)
    monkeypatch.setattr(type(first), "log", capture, raising=False)
    asyncio.run(_run_trigger(first, stop_after=6.0))  # the triggerer dies mid-job
    second = ModelArtsTrainingJobTrigger(**kwargs)  # rebuilt from the stored kwargs
    events = asyncio.run(_run_trigger(second, stop_after=None))
    assert events[0]["status"] == "success"
    starts = [i for i, line in enumerate(capture.lines) if line.startswith("Streaming the logs")]
    assert len(starts) == 2, capture.lines[:5]
    numbers = [int(m) for m in re.findall(r"\[worker-0\] w0 line (\d{5})", "\n".join(capture.lines))]
    first_run = [int(m) for m in re.findall(r"w0 line (\d{5})", "\n".join(capture.lines[: starts[1]]))]
    second_run = numbers[len(first_run) :]
    # Each run starts at the deferral position; the second repeats what the first showed, after its marker.
    assert first_run == list(range(11, 11 + len(first_run))) and len(first_run) > 5
    assert second_run == list(range(11, LINES + 1))
    assert events[0]["log_stream_state"]["cursors"]["worker-0"]["offset"] == LINES * len(b"w0 line 00001\n")
