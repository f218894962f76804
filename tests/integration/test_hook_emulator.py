"""The hooks over real HTTP against the local ModelArts emulator, in AK/SK, temporary-credential and token modes."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging

import pytest
import tenacity

from airflow_provider_modelarts.auth import TOKEN_CACHE
from airflow_provider_modelarts.emulator import DEFAULT_SK
from airflow_provider_modelarts.exceptions import (
    ModelArtsAuthError,
    ModelArtsLogLinkExpiredError,
    ModelArtsNotFoundError,
)
from airflow_provider_modelarts.hooks.modelarts import ModelArtsAsyncHook, ModelArtsHook
from airflow_provider_modelarts.hooks.modelarts_async import SharedHooks

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def _clean_token_cache():
    TOKEN_CACHE.clear()
    yield
    TOKEN_CACHE.clear()


def _hook(**kwargs) -> ModelArtsHook:
    return ModelArtsHook(retry_wait=tenacity.wait_none(), **kwargs)


@pytest.fixture(params=["aksk", "token"])
def conn(request, emulator, monkeypatch):
    """The emulator with AIRFLOW_CONN_MODELARTS_DEFAULT in one auth mode."""
    monkeypatch.setenv("AIRFLOW_CONN_MODELARTS_DEFAULT", emulator.connection_json(request.param))
    return emulator


def _download(hook: ModelArtsHook, url: str, offset: int = 0) -> bytes:
    response = hook.open_log_stream(url, offset=offset)
    try:
        return b"".join(response.iter_content(65536))
    finally:
        response.close()


class TestBothAuthModes:
    def test_job_details(self, conn):
        job = _hook().get_training_job("job-ok")
        assert job["metadata"]["id"] == "job-ok"
        assert job["status"]["phase"] == "Completed"
        assert conn.counters["rejected_auth"] == 0

    def test_list_jobs(self, conn):
        hook = _hook()
        ids = {job["metadata"]["id"] for job in hook.list_training_jobs(page_size=1)}
        assert {"job-ok", "job-failed", "job-running"} <= ids
        failed = hook.list_training_jobs(phases=["Failed"])
        assert [job["metadata"]["id"] for job in failed] == ["job-failed"]

    def test_preview(self, conn):
        preview = _hook().preview_task_log("job-ok", "worker-0")
        assert preview["full_size"] == conn.log_size("job-ok", "worker-0")
        assert preview["content"].endswith("exit with 0\n")

    def test_download_link_full_and_ranged(self, conn):
        hook = _hook()
        url = hook.get_task_log_url("job-ok", "worker-0", download=True)
        body = _download(hook, url)
        assert hashlib.sha256(body).hexdigest() == conn.log_sha256("job-ok", "worker-0")
        assert _download(hook, url, offset=100) == body[100:]

    def test_unknown_job(self, conn):
        with pytest.raises(ModelArtsNotFoundError, match="no-such-job"):
            _hook().get_training_job("no-such-job")

    def test_tasks_and_stop(self, conn):
        hook = _hook()
        assert hook.list_training_job_tasks("job-running")
        hook.stop_training_job("job-running")
        assert hook.get_training_job("job-running")["status"]["phase"] in ("Terminating", "Terminated")

    def test_test_connection(self, conn):
        ok, message = _hook().test_connection()
        assert ok, message

    def test_retries_server_errors(self, conn):
        hook = _hook()
        hook.get_training_job("job-ok")  # token (if any) fetched first
        conn.reset_counters()
        conn.knobs.error_burst = 2
        assert hook.get_training_job("job-ok")["metadata"]["id"] == "job-ok"
        assert conn.counters["server_error"] == 2
        assert conn.counters["job"] == 3

    def test_async_hook(self, conn):
        async def go():
            hook = ModelArtsAsyncHook(retry_wait=tenacity.wait_none())
            try:
                job = await hook.get_training_job("job-ok")
                url = await hook.get_task_log_url("job-ok", "worker-0")
            finally:
                await hook.close()
            return job, url

        job, url = asyncio.run(go())
        assert job["status"]["phase"] == "Completed"
        assert _download(_hook(), url) == conn.log_bytes("job-ok", "worker-0")


class TestTokenMode:
    def test_one_iam_call_for_many_calls_and_hooks(self, emulator, monkeypatch):
        monkeypatch.setenv("AIRFLOW_CONN_MODELARTS_DEFAULT", emulator.connection_json("token"))
        for _ in range(5):
            _hook().get_training_job("job-ok")
        assert emulator.counters["iam_token"] == 1
        assert emulator.counters["job"] == 5

    def test_reauth_once_when_token_expires(self, emulator, monkeypatch):
        monkeypatch.setenv("AIRFLOW_CONN_MODELARTS_DEFAULT", emulator.connection_json("token"))
        hook = _hook()
        hook.get_training_job("job-ok")
        emulator.knobs.expire_token_once = True
        hook.get_training_job("job-ok")
        assert emulator.counters["iam_token"] == 2

    def test_async_reauth_once_when_token_expires(self, emulator, monkeypatch):
        monkeypatch.setenv("AIRFLOW_CONN_MODELARTS_DEFAULT", emulator.connection_json("token"))

        async def go() -> None:
            hook = ModelArtsAsyncHook(retry_wait=tenacity.wait_none())
            try:
                await hook.get_training_job("job-ok")
                emulator.knobs.expire_token_once = True
                job = await hook.get_training_job("job-ok")
            finally:
                await hook.close()
            assert job["status"]["phase"] == "Completed"

        asyncio.run(go())
        assert emulator.counters["iam_token"] == 2

    def test_wrong_password_never_reuses_the_right_passwords_token(self, emulator, monkeypatch):
        monkeypatch.setenv("AIRFLOW_CONN_MODELARTS_DEFAULT", emulator.connection_json("token"))
        _hook().get_training_job("job-ok")
        conn = json.loads(emulator.connection_json("token"))
        conn["password"] = "wrong-password"
        monkeypatch.setenv("AIRFLOW_CONN_MODELARTS_DEFAULT", json.dumps(conn))
        with pytest.raises(ModelArtsAuthError):
            _hook().get_training_job("job-ok")
        assert emulator.counters["iam_token"] == 2

    def test_shared_hook_follows_a_changed_connection(self, emulator, monkeypatch):
        registry = SharedHooks()
        registry.recheck_after = 0.0

        async def go() -> None:
            monkeypatch.setenv("AIRFLOW_CONN_SHARED", emulator.connection_json())
            first = registry.acquire("shared", lambda conn_id: ModelArtsAsyncHook(conn_id, max_retries=0))
            await first.hook.get_training_job("job-ok")
            assert emulator.counters.get("iam_token", 0) == 0
            monkeypatch.setenv("AIRFLOW_CONN_SHARED", emulator.connection_json("token"))
            await asyncio.sleep(0.01)
            second = registry.acquire("shared", lambda conn_id: ModelArtsAsyncHook(conn_id, max_retries=0))
            assert second.hook is first.hook
            await second.hook.get_training_job("job-ok")
            await registry.release("shared")
            await registry.release("shared")

        asyncio.run(go())
        assert emulator.counters["iam_token"] == 1
        assert len(registry) == 0

    def test_wrong_password(self, emulator, monkeypatch):
        conn = json.loads(emulator.connection_json("token"))
        conn["password"] = "wrong-password"
        monkeypatch.setenv("AIRFLOW_CONN_MODELARTS_DEFAULT", json.dumps(conn))
        with pytest.raises(ModelArtsAuthError):
            _hook().get_training_job("job-ok")


class TestAkSk:
    def test_wrong_secret_key(self, emulator, monkeypatch):
        conn = json.loads(emulator.connection_json())
        conn["password"] = "not-the-secret-key"
        monkeypatch.setenv("AIRFLOW_CONN_MODELARTS_DEFAULT", json.dumps(conn))
        with pytest.raises(ModelArtsAuthError) as info:
            _hook().get_training_job("job-ok")
        assert info.value.status_code == 401
        ok, _ = _hook().test_connection()
        assert not ok

    def test_connection_uri_form(self, emulator, monkeypatch):
        monkeypatch.setenv("AIRFLOW_CONN_MODELARTS_DEFAULT", emulator.connection_uri())
        assert _hook().get_training_job("job-ok")["metadata"]["id"] == "job-ok"

    def test_temporary_credentials(self, emulator_factory, monkeypatch):
        emu = emulator_factory(
            temporary_credentials=("TEMPAK0000000001", "TEMP-SECRET-KEY-000001", "STS-TOKEN-01")
        )
        conn = json.loads(emu.connection_json())
        conn.update(login="TEMPAK0000000001", password="TEMP-SECRET-KEY-000001")
        conn["extra"]["security_token"] = "STS-TOKEN-01"
        monkeypatch.setenv("AIRFLOW_CONN_MODELARTS_DEFAULT", json.dumps(conn))
        assert _hook().get_training_job("job-ok")["metadata"]["id"] == "job-ok"

        conn["extra"]["security_token"] = "STS-TOKEN-WRONG"
        monkeypatch.setenv("AIRFLOW_CONN_MODELARTS_DEFAULT", json.dumps(conn))
        with pytest.raises(ModelArtsAuthError):
            _hook().get_training_job("job-ok")

    def test_throttling_retried(self, modelarts_conn):
        modelarts_conn.knobs.throttle_ratio = 0.5
        hook = _hook(max_retries=3)
        for _ in range(4):
            hook.get_training_job("job-ok")
        assert modelarts_conn.counters["throttled"] >= 2

    def test_expired_link(self, modelarts_conn):
        hook = _hook()
        url = hook.get_task_log_url("job-ok", "worker-0")
        modelarts_conn.advance(400)
        with pytest.raises(ModelArtsLogLinkExpiredError):
            hook.open_log_stream(url)

    def test_link_signature_redacted(self, modelarts_conn):
        from urllib.parse import parse_qsl, urlsplit

        from airflow.providers.common.compat.sdk import redact

        url = _hook().get_task_log_url("job-ok", "worker-0")
        signature = dict(parse_qsl(urlsplit(url).query))["Signature"]
        assert signature not in redact(f"{url} {signature}")
        assert DEFAULT_SK not in redact(f"sk={DEFAULT_SK}")


def test_urllib3_debug_log_hides_link_signature(modelarts_conn, caplog):
    from urllib.parse import parse_qsl, urlsplit

    hook = _hook()
    url = hook.get_task_log_url("job-ok", "worker-0")
    signature = dict(parse_qsl(urlsplit(url).query))["Signature"]
    raw_signature = urlsplit(url).query.rsplit("Signature=", 1)[1]
    with caplog.at_level(logging.DEBUG, logger="urllib3"):
        response = hook.open_log_stream(url)
        response.close()
    lines = [r.getMessage() for r in caplog.records if r.name == "urllib3.connectionpool"]
    request_lines = [line for line in lines if "GET /modelarts-emulator-logs/job-ok/" in line]
    assert request_lines, lines
    assert "AccessKeyId=" in request_lines[0] and "Signature=***" in request_lines[0]
    for secret in (signature, raw_signature):
        assert secret not in caplog.text
