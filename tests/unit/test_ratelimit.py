"""Client-side pacing: one adaptive limiter per (endpoint, credential), shared by threads and event loops."""

from __future__ import annotations

import asyncio
import itertools
import threading

import httpx
import pytest
import requests_mock as rm
import tenacity

from airflow_provider_modelarts import ratelimit
from airflow_provider_modelarts.connection import ModelArtsConnectionConfig
from airflow_provider_modelarts.exceptions import ModelArtsConfigError
from airflow_provider_modelarts.hooks.modelarts import ModelArtsAsyncHook, ModelArtsHook
from airflow_provider_modelarts.ratelimit import (
    MIN_RATE,
    RECOVERY_SUCCESSES,
    AdaptiveRateLimiter,
    LimiterKey,
    get_rate_limiter,
)

PID = "0123456789abcdef0123456789abcdef"
BASE = "http://127.0.0.1:18080"
JOB_URL = f"{BASE}/v2/{PID}/training-jobs/job-1"
EPS = 1e-9


class FakeClock:
    """Moves 1 ms forward on every read; sleeps only record the time they would have woken up."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ticks = itertools.count()
        self.sends: list[float] = []

    def __call__(self) -> float:
        with self._lock:
            return next(self._ticks) / 1000

    def limiter(self, rate: float) -> AdaptiveRateLimiter:
        def reserve_and_record() -> float:
            # The limiter's slot is when the request goes out; record it.
            wait = limiter_reserve()
            now = self()
            with self._lock:
                self.sends.append(now + wait)
            return 0.0

        limiter = AdaptiveRateLimiter(rate, clock=self)
        limiter_reserve = limiter.reserve
        limiter.reserve = reserve_and_record  # type: ignore[method-assign]
        return limiter


def _spacing_ok(times: list[float], rate: float) -> bool:
    ordered = sorted(times)
    return all(b - a >= 1 / rate - 2e-3 for a, b in itertools.pairwise(ordered))


def _max_in_window(times: list[float], window: float) -> int:
    ordered = sorted(times)
    return max(sum(1 for t in ordered[i:] if t < start + window) for i, start in enumerate(ordered))


def test_threads_and_event_loop_share_one_rate():
    clock = FakeClock()
    limiter = clock.limiter(20)

    def worker() -> None:
        for _ in range(50):
            limiter.acquire()

    async def coroutines() -> None:
        await asyncio.gather(*(limiter.aacquire() for _ in range(50)))

    threads = [threading.Thread(target=worker) for _ in range(4)]
    threads.append(threading.Thread(target=asyncio.run, args=(coroutines(),)))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(clock.sends) == 250
    # The fake clock moves 1 ms per read, so each slot is at most 2 ms late against the ideal spacing.
    assert _spacing_ok(clock.sends, 20)
    assert _max_in_window(clock.sends, 1.0) <= 20 + 1


def test_slots_are_evenly_spaced_from_the_first_request():
    now = [100.0]
    limiter = AdaptiveRateLimiter(4, clock=lambda: now[0])
    waits = [limiter.reserve() for _ in range(5)]
    assert waits == pytest.approx([0, 0.25, 0.5, 0.75, 1.0])
    now[0] = 200.0  # idle for a long time: no credit is saved up, the next slot is now
    assert limiter.reserve() == 0
    assert limiter.reserve() == pytest.approx(0.25)


def test_async_acquire_does_not_block_the_loop():
    limiter = AdaptiveRateLimiter(50)
    ticks: list[int] = []

    async def ticker(stop: asyncio.Event) -> None:
        while not stop.is_set():
            ticks.append(1)
            await asyncio.sleep(0)

    async def main() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(ticker(stop))
        await asyncio.gather(*(limiter.aacquire() for _ in range(10)))
        stop.set()
        await task

    asyncio.run(main())
    # Ten slots at 50/s span 180 ms of waiting; the ticker ran all along.
    assert len(ticks) > 10


def test_a_429_halves_the_rate_and_successes_bring_it_back():
    now = [0.0]
    limiter = AdaptiveRateLimiter(10, clock=lambda: now[0])
    limiter.record(429)
    assert limiter.rate == 5 and limiter.throttled == 1
    limiter.record(429)
    assert limiter.rate == 2.5
    first = limiter.reserve()
    second = limiter.reserve()
    assert second - first == pytest.approx(1 / 2.5)
    for expected in (3.5, 4.5, 5.5):
        limiter.record(200)
        assert limiter.rate == pytest.approx(expected)
    for _ in range(RECOVERY_SUCCESSES):
        limiter.record(200)
    assert limiter.rate == 10  # never above the configured rate
    limiter.record(404)
    assert limiter.rate == 10


def test_a_run_of_429s_stops_at_the_floor():
    limiter = AdaptiveRateLimiter(8)
    for _ in range(20):
        limiter.record(429)
    assert limiter.rate == MIN_RATE
    slow = AdaptiveRateLimiter(0.2)
    slow.record(429)
    assert slow.rate == 0.2  # a configured rate below the floor is never lowered


@pytest.mark.parametrize("bad", [0, -1, float("inf"), float("nan"), True, "5"])
def test_bad_rates_are_refused(bad):
    with pytest.raises(ValueError, match="requests per second"):
        AdaptiveRateLimiter(bad)


def test_registry_shares_by_endpoint_and_credential():
    ratelimit.reset_rate_limiters()
    a = get_rate_limiter(LimiterKey("https://m", "ak:A"), 5)
    assert get_rate_limiter(LimiterKey("https://m", "ak:A"), 5) is a
    assert get_rate_limiter(LimiterKey("https://m", "ak:B"), 5) is not a
    assert get_rate_limiter(LimiterKey("https://other", "ak:A"), 5) is not a
    a.record(429)
    get_rate_limiter(LimiterKey("https://m", "ak:A"), 2)
    assert a.max_rate == 2 and a.rate == 2
    get_rate_limiter(LimiterKey("https://m", "ak:A"), 9)
    assert a.max_rate == 9 and a.rate == 9
    ratelimit.reset_rate_limiters()


# ------------------------------------------------------------------------------------------------
# Connection extra and hooks
# ------------------------------------------------------------------------------------------------


def _fields(**extra):
    return dict(
        login="AK0000000000000000001",
        password="SK00000000000000000000001",
        extra={"project_id": PID, "endpoint": BASE, **extra},
        mask=lambda _: None,
    )


@pytest.mark.parametrize(("value", "expected"), [(None, None), ("", None), (5, 5.0), ("0.5", 0.5)])
def test_requests_per_second_extra(value, expected):
    extra = {} if value is None else {"requests_per_second": value}
    assert ModelArtsConnectionConfig.from_fields(**_fields(**extra)).requests_per_second == expected


@pytest.mark.parametrize("bad", [0, -2, "fast", True, "inf", [1]])
def test_bad_requests_per_second_is_a_config_error(bad):
    with pytest.raises(ModelArtsConfigError, match="requests_per_second"):
        ModelArtsConnectionConfig.from_fields(**_fields(requests_per_second=bad))


def test_limiter_key_names_the_credential_not_the_secret():
    config = ModelArtsConnectionConfig.from_fields(**_fields())
    assert config.limiter_key == LimiterKey(BASE, "ak:AK0000000000000000001")
    assert "SK0000" not in repr(config.limiter_key)
    token = ModelArtsConnectionConfig.from_fields(
        login="bob",
        password="pw-secret-1",
        extra={"project_id": PID, "endpoint": BASE, "auth_type": "token", "iam_endpoint": BASE},
        mask=lambda _: None,
    )
    assert token.limiter_key == LimiterKey(BASE, "user:bob/bob")


@pytest.fixture
def paced_conn(monkeypatch):
    ratelimit.reset_rate_limiters()
    monkeypatch.setenv(
        "AIRFLOW_CONN_MODELARTS_DEFAULT",
        '{"conn_type": "modelarts", "login": "AK0000000000000000001", "password": "SK00000000000000000000001",'
        f' "extra": {{"project_id": "{PID}", "endpoint": "{BASE}", "requests_per_second": 1000}}}}',
    )
    yield
    ratelimit.reset_rate_limiters()


@pytest.mark.usefixtures("paced_conn")
def test_sync_and_async_hooks_share_the_limiter_and_adapt_to_429():
    sync_hook = ModelArtsHook(retry_wait=tenacity.wait_none())
    async_hook = ModelArtsAsyncHook(
        retry_wait=tenacity.wait_none(),
        transport=httpx.MockTransport(
            lambda request: (
                httpx.Response(429, json={"error_code": "APIG.0308", "error_msg": "over ratelimit"})
                if request.headers.get("x-attempt") == "throttle"
                else httpx.Response(200, json={"id": "job-1"})
            )
        ),
    )
    limiter = get_rate_limiter(sync_hook.config.limiter_key, 1000)
    with rm.Mocker() as mocker:
        mocker.get(
            JOB_URL,
            [
                {"status_code": 429, "json": {"error_code": "APIG.0308", "error_msg": "over ratelimit"}},
                {"status_code": 429, "json": {"error_code": "APIG.0308", "error_msg": "over ratelimit"}},
                {"status_code": 200, "json": {"id": "job-1"}},
            ],
        )
        assert sync_hook.get_training_job("job-1") == {"id": "job-1"}
    # Two 429s halved the rate twice; the success raised it by one step.
    assert limiter.throttled == 2
    assert limiter.rate == pytest.approx(250 + 100)

    async def run_async() -> dict:
        try:
            assert get_rate_limiter((await async_hook.get_config()).limiter_key, 1000) is limiter
            return await async_hook.get_training_job("job-1")
        finally:
            await async_hook.close()

    assert asyncio.run(run_async()) == {"id": "job-1"}
    assert limiter.rate == pytest.approx(450)


@pytest.mark.usefixtures("paced_conn")
def test_obs_downloads_and_iam_calls_are_not_paced():
    hook = ModelArtsHook(retry_wait=tenacity.wait_none(), max_retries=0)
    link = "https://b.obs.example.com/k.log?AccessKeyId=AK&Expires=1&Signature=abcdefgh"
    with rm.Mocker() as mocker:
        mocker.get(link, status_code=429, text="<Error><Code>SlowDown</Code></Error>")
        with pytest.raises(Exception, match="429"):
            hook.open_log_stream(link)
    assert get_rate_limiter(hook.config.limiter_key, 1000).throttled == 0


def test_pacing_is_off_by_default(monkeypatch):
    ratelimit.reset_rate_limiters()
    monkeypatch.setenv(
        "AIRFLOW_CONN_MODELARTS_DEFAULT",
        '{"conn_type": "modelarts", "login": "AK0000000000000000001", "password": "SK00000000000000000000001",'
        f' "extra": {{"project_id": "{PID}", "endpoint": "{BASE}"}}}}',
    )
    hook = ModelArtsHook()
    with rm.Mocker() as mocker:
        mocker.get(JOB_URL, json={"id": "job-1"})
        hook.get_training_job("job-1")
    assert ratelimit._limiters == {}


@pytest.mark.usefixtures("paced_conn")
def test_calls_to_other_services_are_not_paced():
    hook = ModelArtsHook(retry_wait=tenacity.wait_none(), max_retries=0)
    smn = "http://127.0.0.1:18099/v2/" + PID + "/notifications/topics/urn:smn:x/publish"
    with rm.Mocker() as mocker:
        mocker.post(smn, status_code=429, json={"error_code": "SMN.0001", "error_msg": "busy"})
        with pytest.raises(Exception, match="429"):
            hook.service_json("POST", smn, json_body={"message": "m"})
    assert get_rate_limiter(hook.config.limiter_key, 1000).throttled == 0
