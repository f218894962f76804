"""Auth objects, the token cache key, the shared async-hook registry and import without side effects."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from datetime import datetime, timedelta, timezone

import httpx
import pytest
import requests
import tenacity

from airflow_provider_modelarts.auth import TOKEN_CACHE, IamToken, IamTokenAuth
from airflow_provider_modelarts.exceptions import ModelArtsAuthError
from airflow_provider_modelarts.hooks.modelarts import ModelArtsHook
from airflow_provider_modelarts.hooks.modelarts_async import ModelArtsAsyncHook, SharedHooks

PID = "0123456789abcdef0123456789abcdef"
BASE = "http://127.0.0.1:18080"
IAM = "http://127.0.0.1:18081"
JOB_URL = f"{BASE}/v2/{PID}/training-jobs/job-1"
TOKEN_URL = f"{IAM}/v3/auth/tokens"
KEY = ("iam", "domain", "user", PID, "hash")


def _token(value: str) -> IamToken:
    return IamToken(token=value, expires_at=datetime.now(timezone.utc) + timedelta(hours=1))


def _conn(password: str, **extra: object) -> str:
    return json.dumps(
        {
            "conn_type": "modelarts",
            "login": "iam-user",
            "password": password,
            "extra": {
                "project_id": PID,
                "endpoint": BASE,
                "auth_type": "token",
                "iam_endpoint": IAM,
                **extra,
            },
        }
    )


@pytest.fixture(autouse=True)
def _clean_cache():
    TOKEN_CACHE.clear()
    yield
    TOKEN_CACHE.clear()


class TestTokenCacheKey:
    def test_wrong_password_never_reuses_the_token_of_the_right_one(self, monkeypatch, requests_mock):
        def iam(request, context):
            body = json.loads(request.body)
            password = body["auth"]["identity"]["password"]["user"]["password"]
            if password != "right-password":
                context.status_code = 401
                return {"error": {"code": 401, "message": "bad password"}}
            context.status_code = 201
            context.headers["X-Subject-Token"] = "GOOD-TOKEN"
            expires = (datetime.now(timezone.utc) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
            return {"token": {"expires_at": expires}}

        requests_mock.post(TOKEN_URL, json=iam)
        requests_mock.get(JOB_URL, json={"metadata": {"id": "job-1"}})
        monkeypatch.setenv("AIRFLOW_CONN_RIGHT", _conn("right-password"))
        monkeypatch.setenv("AIRFLOW_CONN_WRONG", _conn("wrong-password"))
        assert ModelArtsHook("right", max_retries=0).get_training_job("job-1") == {
            "metadata": {"id": "job-1"}
        }
        with pytest.raises(ModelArtsAuthError):
            ModelArtsHook("wrong", max_retries=0).get_training_job("job-1")
        token_calls = [r for r in requests_mock.request_history if r.url.startswith(TOKEN_URL)]
        assert len(token_calls) == 2
        job_calls = [r for r in requests_mock.request_history if r.url == JOB_URL]
        assert [r.headers["X-Auth-Token"] for r in job_calls] == ["GOOD-TOKEN"]

    def test_same_password_shares_one_token(self, monkeypatch, requests_mock):
        requests_mock.post(
            TOKEN_URL,
            status_code=201,
            headers={"X-Subject-Token": "SHARED"},
            json={"token": {"expires_at": "2999-01-01T00:00:00.000000Z"}},
        )
        requests_mock.get(JOB_URL, json={})
        monkeypatch.setenv("AIRFLOW_CONN_ONE", _conn("pw"))
        monkeypatch.setenv("AIRFLOW_CONN_TWO", _conn("pw"))
        ModelArtsHook("one").get_training_job("job-1")
        ModelArtsHook("two").get_training_job("job-1")
        assert sum(r.url.startswith(TOKEN_URL) for r in requests_mock.request_history) == 1


class TestIamTokenAuth:
    def _fetcher(self, values: list[str]):
        tokens = iter(values)
        return lambda: _token(next(tokens))

    def test_requests_resends_once_with_a_new_token_on_401(self, requests_mock):
        requests_mock.get("http://api.test/x", [{"status_code": 401}, {"status_code": 200, "text": "ok"}])
        auth = IamTokenAuth(KEY, fetch=self._fetcher(["OLD", "NEW"]))
        response = requests.get("http://api.test/x", auth=auth, timeout=5)
        assert response.status_code == 200
        assert [r.headers["X-Auth-Token"] for r in requests_mock.request_history] == ["OLD", "NEW"]
        assert [r.status_code for r in response.history] == [401]

    def test_requests_persistent_401_is_resent_only_once(self, requests_mock):
        requests_mock.get("http://api.test/x", status_code=401)
        auth = IamTokenAuth(KEY, fetch=self._fetcher(["OLD", "NEW", "NEWER"]))
        assert requests.get("http://api.test/x", auth=auth, timeout=5).status_code == 401
        assert len(requests_mock.request_history) == 2

    def test_httpx_sync_resends_once(self):
        seen: list[str] = []

        def handler(request: httpx.Request) -> httpx.Response:
            seen.append(request.headers["X-Auth-Token"])
            return httpx.Response(401 if len(seen) == 1 else 200)

        auth = IamTokenAuth(KEY, fetch=self._fetcher(["OLD", "NEW"]))
        with httpx.Client(transport=httpx.MockTransport(handler)) as client:
            assert client.get("http://api.test/x", auth=auth).status_code == 200
        assert seen == ["OLD", "NEW"]

    def test_httpx_async_resends_once_and_fetches_once_for_many(self):
        seen: list[str] = []
        fetched: list[str] = []
        values = iter(["OLD", "NEW"])

        async def afetch() -> IamToken:
            await asyncio.sleep(0)
            fetched.append(value := next(values))
            return _token(value)

        def handler(request: httpx.Request) -> httpx.Response:
            seen.append(request.headers["X-Auth-Token"])
            return httpx.Response(200 if request.headers["X-Auth-Token"] == "NEW" or len(seen) > 1 else 401)

        async def main() -> list[int]:
            auth = IamTokenAuth(KEY, afetch=afetch)
            async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
                first = await client.get("http://api.test/x", auth=auth)
                rest = await asyncio.gather(*(client.get("http://api.test/x", auth=auth) for _ in range(5)))
            return [first.status_code, *(r.status_code for r in rest)]

        assert asyncio.run(main()) == [200] * 6
        assert fetched == ["OLD", "NEW"]
        assert seen[:2] == ["OLD", "NEW"]

    def test_a_refusal_of_an_old_token_keeps_the_fresh_one(self):
        TOKEN_CACHE.store(KEY, _token("FRESH"))
        auth = IamTokenAuth(KEY, fetch=self._fetcher(["UNUSED"]))
        assert auth._refused(401, "STALE")
        assert TOKEN_CACHE.peek(KEY).token == "FRESH"


class TestSharedHooks:
    def test_a_changed_connection_gets_a_new_client(self, monkeypatch):
        requests_seen: list[str] = []

        def handler(request: httpx.Request) -> httpx.Response:
            requests_seen.append(str(request.url.host) + ":" + str(request.url.port))
            return httpx.Response(200, json={})

        def aksk(endpoint: str) -> str:
            extra = {"project_id": PID, "endpoint": endpoint}
            return json.dumps({"conn_type": "modelarts", "login": "AK", "password": "SK", "extra": extra})

        def factory(conn_id: str) -> ModelArtsAsyncHook:
            return ModelArtsAsyncHook(
                conn_id, retry_wait=tenacity.wait_none(), transport=httpx.MockTransport(handler)
            )

        registry = SharedHooks()
        registry.recheck_after = 0.0

        async def main() -> tuple[bool, bool]:
            monkeypatch.setenv("AIRFLOW_CONN_SHARED", aksk("http://old.test:1"))
            first = registry.acquire("shared", factory)
            await first.hook.get_training_job("job-1")
            old_client = await first.hook.get_client()
            same = registry.acquire("shared", factory)  # unchanged connection: the same client
            await same.hook.get_training_job("job-1")
            kept = await same.hook.get_client() is old_client
            monkeypatch.setenv("AIRFLOW_CONN_SHARED", aksk("http://new.test:2"))
            await asyncio.sleep(0.01)
            later = registry.acquire("shared", factory)
            await later.hook.get_training_job("job-1")
            replaced = await later.hook.get_client() is not old_client
            for _ in range(3):
                await registry.release("shared")
            assert old_client.is_closed
            return kept, replaced

        assert asyncio.run(main()) == (True, True)
        assert requests_seen == ["old.test:1", "old.test:1", "new.test:2"]
        assert len(registry) == 0


def test_importing_the_hooks_has_no_side_effects():
    code = (
        "import logging\n"
        "import airflow_provider_modelarts.hooks.modelarts as m\n"
        "names = ('urllib3.connectionpool', 'urllib3.util.retry', 'urllib3.poolmanager')\n"
        "before = sum(len(logging.getLogger(n).filters) for n in names)\n"
        "m.ModelArtsHook()\n"
        "m.ModelArtsHook()\n"
        "after = sum(len(logging.getLogger(n).filters) for n in names)\n"
        "print('FILTERS', before, after)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert [line.split()[1:] for line in out.stdout.splitlines() if line.startswith("FILTERS")] == [
        ["0", "3"]
    ]
