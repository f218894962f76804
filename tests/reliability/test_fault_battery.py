"""Fault battery: real HTTP against the emulator with its fault knobs turned up.

* big logs archived while links expire, connections drop, the API throttles and a 5xx burst hits;
* the archiving process SIGKILLed mid-stream, then run again;
* token expiry mid-run and wrong credentials;
* the deferrable trigger polling through throttling and 5xx, timing out, and rebuilt from ``serialize()``.

API-call counts are printed (``pytest -s``) so regressions in request volume are visible.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import tenacity

from airflow_provider_modelarts.exceptions import ModelArtsAuthError
from airflow_provider_modelarts.retry import RetryAfterWait
from airflow_provider_modelarts.transfer import TrainingJobLogArchiver, read_manifest

pytestmark = [pytest.mark.integration]

MiB = 1024 * 1024
API_KINDS = ("job", "search", "log_url", "preview", "tasks", "actions")


def _api_calls(counters: Any) -> int:
    return sum(counters.get(k, 0) for k in API_KINDS)


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(4 * MiB):
            h.update(chunk)
    return h.hexdigest()


def _job(job_id: str, sizes: dict[str, int], *, seed: int = 1) -> dict[str, Any]:
    return {
        "id": job_id,
        "name": job_id,
        "timeline": [{"phase": "Completed", "at": 0}],
        "tasks": [
            {"id": task, "exit_code": 0, "log": {"generate": {"size": size, "seed": seed + i}}}
            for i, (task, size) in enumerate(sizes.items())
        ],
    }


def _hook(**kwargs: Any):
    from airflow_provider_modelarts.hooks.modelarts import ModelArtsHook

    return ModelArtsHook(**kwargs)


def _archive(dest: Path, job_id: str, *, hook_kwargs: dict[str, Any] | None = None, **kwargs: Any):
    from airflow.providers.common.compat.sdk import ObjectStoragePath

    kw = hook_kwargs or {}
    job = _hook(**kw).get_training_job(job_id)
    archiver = TrainingJobLogArchiver(lambda: _hook(**kw), ObjectStoragePath(f"file://{dest}"), **kwargs)
    return archiver.archive(job)


def _assert_archive_matches(emu: Any, dest: Path, job_id: str, tasks: list[str]) -> dict[str, Any]:
    """Every task's archived bytes hash to the source, the manifest agrees, nothing partial is left."""
    manifest = json.loads((dest / job_id / "manifest.json").read_text())
    assert manifest["training_job_id"] == job_id
    assert manifest["complete"] is True
    by_task = {e["task_id"]: e for e in manifest["tasks"]}
    assert sorted(by_task) == sorted(tasks)
    for task in tasks:
        final = dest / job_id / f"{task}.log"
        expected = emu.log_sha256(job_id, task)
        assert final.stat().st_size == emu.log_size(job_id, task), task
        assert _sha256_file(final) == expected, f"{task}: archived bytes differ from the source"
        assert by_task[task]["sha256"] == expected
        assert by_task[task]["complete"] is True
    leftovers = [p.name for p in (dest / job_id).iterdir() if p.name.startswith(".") or "partial" in p.name]
    assert not leftovers, f"temporary files left next to the final paths: {leftovers}"
    return manifest


# ------------------------------------------------------------------------------------------------
# Big logs under every fault at once
# ------------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_archive_two_200mib_logs_through_every_fault(emulator_factory, monkeypatch, tmp_path):
    size = 200 * MiB
    tasks = {"worker-0": size, "worker-1": size}
    emu = emulator_factory({"jobs": [_job("job-big", tasks)]})
    monkeypatch.setenv("AIRFLOW_CONN_MODELARTS_DEFAULT", emu.connection_json())
    emu.knobs.link_ttl = 3
    emu.knobs.drop_after_bytes = 37 * MiB + 12345
    emu.knobs.drop_downloads = 3
    emu.knobs.throttle_ratio = 0.2
    emu.knobs.retry_after = 1
    emu.reset_counters()

    # A 5xx burst once the transfer is well under way.
    burst_fired = threading.Event()
    stop = threading.Event()

    def burst_when_half_done() -> None:
        while not stop.is_set():
            if emu.counters["bytes_served"] > size:
                emu.knobs.error_burst = 3
                burst_fired.set()
                return
            time.sleep(0.05)

    watcher = threading.Thread(target=burst_when_half_done, daemon=True)
    watcher.start()
    started = time.monotonic()
    try:
        result = _archive(
            tmp_path,
            "job-big",
            # Honour Retry-After but back off only 0.2 s otherwise; enough retries that a 5xx burst
            # followed by a run of 429s cannot exhaust them (the default policy is exercised elsewhere).
            hook_kwargs={"retry_wait": RetryAfterWait(tenacity.wait_fixed(0.2)), "max_retries": 10},
            max_workers=2,
            chunk_size=MiB,
            max_attempts=20,
        )
    finally:
        stop.set()
        watcher.join(5)
    elapsed = time.monotonic() - started
    counters = dict(emu.counters)
    print(
        f"\n2 x 200 MiB through faults: {elapsed:.1f}s, api calls={_api_calls(counters)} counters={counters}"
    )

    manifest = _assert_archive_matches(emu, tmp_path, "job-big", list(tasks))
    assert {t["task_id"] for t in result.to_xcom()["tasks"]} == set(tasks)
    assert manifest["complete"]
    assert burst_fired.is_set(), "the 5xx burst never fired (transfer finished too early?)"
    assert counters.get("throttled", 0) > 0, "no call was throttled: the 429 path was not exercised"
    assert counters.get("server_error", 0) > 0
    # The faults cost a bounded number of calls: a handful of links per task, not one per chunk.
    assert _api_calls(counters) <= 60, counters
    assert counters.get("obs_get", 0) <= 40, counters
    # Bytes served stay within a small factor of the data: resumes, not restarts from zero.
    assert counters["bytes_served"] <= 2 * size * 1.5, counters


# ------------------------------------------------------------------------------------------------
# SIGKILL mid-stream, then run again
# ------------------------------------------------------------------------------------------------

_CHILD = textwrap.dedent(
    """
    import sys
    from tests.reliability.test_fault_battery import _archive
    from pathlib import Path
    _archive(Path(sys.argv[1]), sys.argv[2], max_workers=2, chunk_size=256 * 1024)
    print("FINISHED")
    """
)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_sigkill_mid_stream_then_rerun_is_complete(emulator_factory, monkeypatch, tmp_path):
    tasks = {"worker-0": 128 * MiB, "worker-1": 128 * MiB}
    emu = emulator_factory({"jobs": [_job("job-kill", tasks, seed=7)]})
    conn = emu.connection_json()
    monkeypatch.setenv("AIRFLOW_CONN_MODELARTS_DEFAULT", conn)
    dest = tmp_path / "archive"
    env = {**os.environ, "AIRFLOW_CONN_MODELARTS_DEFAULT": conn}
    repo = Path(__file__).resolve().parents[2]
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(repo), env.get("PYTHONPATH")]))
    emu.reset_counters()
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(dest), "job-kill"],
        cwd=repo,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        # Kill once a staged copy holds 16 MiB: provably mid-stream, whatever the server counts.
        while _staged_bytes(dest / "job-kill") < 16 * MiB:
            assert child.poll() is None, f"child ended early:\n{child.communicate()[0].decode()}"
            assert time.monotonic() < deadline, "child never started streaming"
            time.sleep(0.001)
        os.killpg(child.pid, signal.SIGKILL)
        staged_at_kill = _staged_bytes(dest / "job-kill")
        out = child.communicate(timeout=30)[0].decode(errors="replace")
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait(10)
    served_when_killed = emu.counters["bytes_served"]
    assert child.returncode == -signal.SIGKILL
    assert "FINISHED" not in out
    assert staged_at_kill < sum(tasks.values()), "the child finished before it was killed"

    # Nothing of the killed run may look finished: no manifest, no complete-looking final object.
    job_dir = dest / "job-kill"
    assert not (job_dir / "manifest.json").exists()
    for task, size in tasks.items():
        final = job_dir / f"{task}.log"
        if final.exists():
            # Only acceptable if it really is the complete, correct log.
            assert final.stat().st_size == size and _sha256_file(final) == emu.log_sha256("job-kill", task)

    # The re-run completes and verifies; leftovers of the killed run are not taken as archives.
    rerun = _archive(dest, "job-kill", max_workers=2)
    # No manifest survived the kill, so nothing may be skipped as "already archived".
    assert rerun.tasks and not any(t.skipped for t in rerun.tasks), rerun.tasks
    final_files = sorted(p.name for p in job_dir.iterdir() if not p.name.startswith("."))
    assert final_files == [
        "manifest.json",
        "worker-0.log",
        "worker-0.log.record.json",
        "worker-1.log",
        "worker-1.log.record.json",
    ]
    for task in tasks:
        final = job_dir / f"{task}.log"
        assert _sha256_file(final) == emu.log_sha256("job-kill", task)
    manifest = read_manifest(_path(job_dir / "manifest.json"))
    assert manifest is not None and manifest["complete"] is True
    stale = [p.name for p in job_dir.iterdir() if p.name.startswith(".")]
    print(
        f"\nkill test: SIGKILL with {staged_at_kill / MiB:.1f} MiB staged, "
        f"{served_when_killed / MiB:.1f} MiB served; staging files left by the "
        f"killed run: {stale}"
    )
    # Whatever the killed run staged is hidden (dot-prefixed) and never at a final name.
    assert all(name.endswith(".partial") for name in stale), stale
    # ...and the re-run removed it: staging files whose writer died do not pile up.
    assert stale == [], stale


def _staged_bytes(job_dir: Path) -> int:
    try:
        return sum(p.stat().st_size for p in job_dir.glob(".*.partial"))
    except OSError:
        return 0


def _path(p: Path):
    from airflow.providers.common.compat.sdk import ObjectStoragePath

    return ObjectStoragePath(f"file://{p}")


# ------------------------------------------------------------------------------------------------
# Credentials
# ------------------------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_token_expiry_mid_run_reauthenticates_exactly_once(emulator_factory, monkeypatch, tmp_path):
    emu = emulator_factory({"jobs": [_job("job-tok", {"worker-0": 2 * MiB, "worker-1": MiB})]})
    monkeypatch.setenv("AIRFLOW_CONN_MODELARTS_DEFAULT", emu.connection_json(auth_type="token"))
    from airflow_provider_modelarts import auth

    auth.TOKEN_CACHE.clear()
    emu.reset_counters()
    hook = _hook(retry_wait=tenacity.wait_none())
    hook.get_training_job("job-tok")
    assert emu.counters["iam_token"] == 1
    emu.knobs.expire_token_once = True
    _archive(tmp_path, "job-tok", hook_kwargs={"retry_wait": tenacity.wait_none()}, max_workers=1)
    counters = dict(emu.counters)
    print(f"\ntoken expiry: counters={counters}")
    assert counters["iam_token"] == 2, f"expected exactly one re-auth, got {counters['iam_token'] - 1}"
    assert counters.get("rejected_auth", 0) == 1
    _assert_archive_matches(emu, tmp_path, "job-tok", ["worker-0", "worker-1"])


@pytest.mark.timeout(30)
@pytest.mark.parametrize("auth_type", ["aksk", "token"])
def test_wrong_credentials_fail_at_once_without_retry_storm(emulator_factory, monkeypatch, auth_type):
    emu = emulator_factory({"jobs": [_job("job-x", {"worker-0": 1024})]})
    conn = json.loads(emu.connection_json(auth_type=auth_type))
    conn["password"] = "definitely-not-the-secret"
    monkeypatch.setenv("AIRFLOW_CONN_MODELARTS_DEFAULT", json.dumps(conn))
    from airflow_provider_modelarts import auth

    auth.TOKEN_CACHE.clear()
    emu.reset_counters()
    started = time.monotonic()
    with pytest.raises(ModelArtsAuthError) as info:
        _hook(retry_wait=tenacity.wait_none(), max_retries=5).get_training_job("job-x")
    elapsed = time.monotonic() - started
    counters = dict(emu.counters)
    print(f"\nwrong credentials ({auth_type}): {elapsed:.2f}s counters={counters}")
    assert elapsed < 5
    assert info.value.status_code in (401, 403)
    total = counters.get("rejected_auth", 0) + counters.get("iam_token", 0) + _api_calls(counters)
    assert total <= 2, f"retry storm on a credential error: {counters}"
    assert "definitely-not-the-secret" not in str(info.value)


# ------------------------------------------------------------------------------------------------
# Deferrable waiting
# ------------------------------------------------------------------------------------------------


def _rebuilt(trigger: Any) -> Any:
    classpath, kwargs = trigger.serialize()
    module, name = classpath.rsplit(".", 1)
    # Round-trip through JSON as the triggerer's database row does.
    return getattr(importlib.import_module(module), name)(**json.loads(json.dumps(kwargs)))


async def _first_event(trigger: Any, timeout: float) -> Any:
    async def first() -> Any:
        async for event in trigger.run():
            return event
        raise AssertionError("trigger ended without an event")

    return await asyncio.wait_for(first(), timeout)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("rebuild", [False, True], ids=["direct", "from-serialize"])
def test_trigger_polls_through_throttling_and_5xx(emulator_factory, monkeypatch, rebuild):
    from airflow_provider_modelarts.triggers.modelarts import ModelArtsTrainingJobTrigger

    job = _job("job-wait", {"worker-0": 1024})
    job["timeline"] = [
        {"phase": "Pending", "at": 0},
        {"phase": "Running", "at": 1},
        {"phase": "Completed", "at": 3},
    ]
    emu = emulator_factory({"jobs": [job]})
    monkeypatch.setenv("AIRFLOW_CONN_MODELARTS_DEFAULT", emu.connection_json())
    emu.knobs.throttle_ratio = 0.5
    emu.knobs.retry_after = 0
    emu.knobs.error_burst = 4
    emu.reset_counters()
    trigger = ModelArtsTrainingJobTrigger(
        training_job_id="job-wait", poll_interval=0.2, end_time=time.time() + 40
    )
    if rebuild:
        trigger = _rebuilt(trigger)
    event = asyncio.run(_first_event(trigger, 45))
    counters = dict(emu.counters)
    print(f"\ntrigger through faults ({'rebuilt' if rebuild else 'direct'}): {event.payload} {counters}")
    assert event.payload["status"] == "success", event.payload
    assert event.payload["phase"] == "Completed"
    assert counters.get("throttled", 0) + counters.get("server_error", 0) >= 4


@pytest.mark.timeout(30)
@pytest.mark.parametrize("rebuild", [False, True], ids=["direct", "from-serialize"])
def test_trigger_on_a_job_that_never_ends_times_out_clearly(emulator_factory, monkeypatch, rebuild):
    from airflow_provider_modelarts.triggers.modelarts import ModelArtsTrainingJobTrigger

    job = _job("job-forever", {"worker-0": 1024})
    job["timeline"] = [{"phase": "Running", "at": 0}]
    emu = emulator_factory({"jobs": [job]})
    monkeypatch.setenv("AIRFLOW_CONN_MODELARTS_DEFAULT", emu.connection_json())
    trigger = ModelArtsTrainingJobTrigger(
        training_job_id="job-forever", poll_interval=0.3, end_time=time.time() + 2
    )
    if rebuild:
        trigger = _rebuilt(trigger)
    started = time.monotonic()
    event = asyncio.run(_first_event(trigger, 20))
    assert time.monotonic() - started < 6
    assert event.payload["status"] == "timeout"
    assert event.payload["phase"] == "Running"
    message = event.payload["message"]
    assert "job-forever" in message and "timed out" in message.lower(), message
