"""Pacing over real HTTP: sync hooks on several threads and the async hook share one limiter against the
emulator's gateway rate limit (``--rate-limit``)."""

from __future__ import annotations

import asyncio
import json
import shlex
import subprocess
import sys
import threading

import pytest
import tenacity

from airflow_provider_modelarts import ratelimit
from airflow_provider_modelarts.exceptions import ModelArtsApiError
from airflow_provider_modelarts.hooks.modelarts import ModelArtsAsyncHook, ModelArtsHook

pytestmark = pytest.mark.integration

RATE = 10
SCENARIO = {"jobs": [{"id": "rl-job", "timeline": [{"phase": "Completed", "at": 0}], "tasks": []}]}


def _conn(emu, **extra) -> str:
    conn = json.loads(emu.connection_json())
    conn["extra"].update(extra)
    return json.dumps(conn)


def _workload(threads: int, calls: int, async_calls: int) -> list[BaseException]:
    errors: list[BaseException] = []

    def sync_worker() -> None:
        hook = ModelArtsHook(retry_wait=tenacity.wait_fixed(0.05), max_retries=60)
        try:
            for _ in range(calls):
                hook.get_training_job("rl-job")
        except BaseException as err:
            errors.append(err)

    async def async_worker() -> None:
        hook = ModelArtsAsyncHook(retry_wait=tenacity.wait_fixed(0.05), max_retries=60)
        try:
            await asyncio.gather(*(hook.get_training_job("rl-job") for _ in range(async_calls)))
        finally:
            await hook.close()

    workers = [threading.Thread(target=sync_worker) for _ in range(threads)]
    for worker in workers:
        worker.start()
    try:
        asyncio.run(async_worker())
    except BaseException as err:
        errors.append(err)
    for worker in workers:
        worker.join()
    return errors


@pytest.fixture
def limited(emulator_factory):
    ratelimit.reset_rate_limiters()
    yield emulator_factory(SCENARIO, rate_limit=f"{RATE}/s")
    ratelimit.reset_rate_limiters()


@pytest.mark.timeout(120)
def test_paced_hooks_stay_under_the_gateway_limit(limited, monkeypatch):
    emu = limited
    monkeypatch.setenv("AIRFLOW_CONN_MODELARTS_DEFAULT", _conn(emu, requests_per_second=RATE))
    start = len(emu.rate_limiter.allowed_times())

    assert _workload(threads=3, calls=8, async_calls=8) == []

    assert emu.counters["throttled"] == 0
    times = emu.rate_limiter.allowed_times()[start:]
    assert len(times) == 32
    # The emulator's own clock: the calls it let through never came faster than the set rate.
    assert (len(times) - 1) / (times[-1] - times[0]) <= RATE * 1.05
    # ... and in no one-second window more than the rate (one more for arrival jitter); the bucket would
    # have let a burst of 10 through, so this is the client's doing.
    assert max(sum(1 for t in times if s <= t < s + 1.0) for s in times) <= RATE + 1


@pytest.mark.timeout(120)
def test_unpaced_hooks_hit_the_limit(limited, monkeypatch):
    emu = limited
    monkeypatch.setenv("AIRFLOW_CONN_MODELARTS_DEFAULT", _conn(emu))
    assert _workload(threads=3, calls=8, async_calls=8) == []
    assert emu.counters["throttled"] > 0


@pytest.mark.timeout(60)
def test_cli_rate_limit_answers_apig_0308(monkeypatch):
    proc = subprocess.Popen(
        [sys.executable, "-m", "airflow_provider_modelarts.emulator", "--rate-limit", "2/min"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline() for _ in range(5)]
        conn = next(line for line in lines if line.startswith("export AIRFLOW_CONN_MODELARTS_DEFAULT="))
        monkeypatch.setenv("AIRFLOW_CONN_MODELARTS_DEFAULT", shlex.split(conn)[1].split("=", 1)[1])
        hook = ModelArtsHook(max_retries=0)
        job_id = lines[3].split(": ", 1)[1].split(",")[0].strip()
        hook.get_training_job(job_id)
        hook.get_training_job(job_id)
        with pytest.raises(ModelArtsApiError) as info:
            hook.get_training_job(job_id)
    finally:
        proc.terminate()
        proc.wait(10)
    err = info.value
    assert (err.status_code, err.error_code) == (429, "APIG.0308")
    assert err.error_msg.endswith("over ratelimit,limit:2,time:1 minute")
    assert err.request_id and getattr(err, "retry_after", None) is None
