"""What the hook says when things go wrong: where a request could not go, who refused, which connection."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from unittest import mock

import pytest
import requests
import tenacity

from airflow_provider_modelarts import connection as connection_module
from airflow_provider_modelarts.auth import TOKEN_CACHE
from airflow_provider_modelarts.exceptions import (
    ModelArtsAuthError,
    ModelArtsConfigError,
    ModelArtsTransportError,
)
from airflow_provider_modelarts.hooks import modelarts as hook_module
from airflow_provider_modelarts.hooks.modelarts import ModelArtsAsyncHook, ModelArtsHook

PID = "0123456789abcdef0123456789abcdef"


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def conn(endpoint: str, **extra) -> dict:
    return {
        "conn_type": "modelarts",
        "login": "AK",
        "password": "SK",
        "extra": {"project_id": PID, "endpoint": endpoint, **extra},
    }


@pytest.fixture(autouse=True)
def _clean_token_cache():
    TOKEN_CACHE.clear()
    yield
    TOKEN_CACHE.clear()


@pytest.fixture
def use_conn(monkeypatch):
    def setter(value: dict, conn_id: str = "modelarts_default") -> None:
        monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(value))

    return setter


@pytest.fixture
def silent_server() -> Iterator[tuple[int, list[socket.socket]]]:
    """Accepts connections and never answers; yields (port, accepted connections)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    accepted: list[socket.socket] = []

    def serve() -> None:
        while True:
            try:
                accepted.append(sock.accept()[0])
            except OSError:
                return

    threading.Thread(target=serve, daemon=True).start()
    yield sock.getsockname()[1], accepted
    sock.close()
    for c in accepted:
        c.close()


@contextmanager
def spy_requests() -> Iterator[list[dict]]:
    """Record the keyword arguments of every ``requests.Session.request`` call (and still send it)."""
    calls: list[dict] = []
    original = requests.Session.request

    def request(self, method, url, **kwargs):
        calls.append(kwargs)
        return original(self, method, url, **kwargs)

    with mock.patch.object(requests.Session, "request", request):
        yield calls


class TestTransportErrors:
    def test_sync_error_names_where_and_why(self, use_conn):
        port = closed_port()
        use_conn(conn(f"http://127.0.0.1:{port}"))
        hook = ModelArtsHook(retry_wait=tenacity.wait_none(), max_retries=1)
        with pytest.raises(ModelArtsTransportError) as info:
            hook.get_training_job("my-train")
        message = str(info.value)
        assert message == (
            f"GET /v2/{PID}/training-jobs/my-train got no answer from http://127.0.0.1:{port}: "
            "connection refused (is anything listening on that port?) (ConnectionError)"
        )
        assert info.value.is_retryable

    def test_async_error_names_where_and_why(self, use_conn):
        port = closed_port()
        use_conn(conn(f"http://127.0.0.1:{port}"))

        async def go() -> None:
            hook = ModelArtsAsyncHook(retry_wait=tenacity.wait_none(), max_retries=0)
            try:
                await hook.get_training_job("my-train")
            finally:
                await hook.close()

        with pytest.raises(ModelArtsTransportError) as info:
            asyncio.run(go())
        assert f"got no answer from http://127.0.0.1:{port}: connection refused" in str(info.value)
        assert "(ConnectError)" in str(info.value)

    def test_log_link_error_hides_the_signature(self, use_conn):
        use_conn(conn("http://127.0.0.1:1"))
        port = closed_port()
        url = f"http://127.0.0.1:{port}/bucket/log.txt?AccessKeyId=AK&Expires=1&Signature=S3CR3T"
        hook = ModelArtsHook(retry_wait=tenacity.wait_none(), max_retries=0)
        with pytest.raises(ModelArtsTransportError) as info:
            hook.open_log_stream(url)
        assert f"http://127.0.0.1:{port}: connection refused" in str(info.value)
        assert "S3CR3T" not in str(info.value)
        assert "AccessKeyId" not in str(info.value)


class TestTestConnection:
    def test_closed_port_one_attempt_and_says_where(self, use_conn):
        port = closed_port()
        use_conn(conn(f"http://127.0.0.1:{port}", max_retries=5))
        with spy_requests() as spy:
            ok, message = ModelArtsHook().test_connection()
        assert not ok
        assert len(spy) == 1, "test_connection must not retry"
        assert f"http://127.0.0.1:{port}: connection refused" in message

    def test_silent_server_is_given_a_short_timeout(self, use_conn, silent_server, monkeypatch):
        port, accepted = silent_server
        monkeypatch.setattr(hook_module, "TEST_CONNECTION_TIMEOUT", 0.3)
        use_conn(conn(f"http://127.0.0.1:{port}", request_timeout=120, max_retries=5))
        with spy_requests() as spy:
            ok, message = ModelArtsHook().test_connection()
        assert not ok
        assert len(spy) == 1
        assert spy[-1]["timeout"] == 0.3
        assert f"http://127.0.0.1:{port}: read timeout" in message
        assert len(accepted) == 1

    def test_shorter_connection_timeout_is_kept(self, use_conn, silent_server):
        port, _ = silent_server
        use_conn(conn(f"http://127.0.0.1:{port}", request_timeout=0.2))
        with spy_requests() as spy:
            ok, _ = ModelArtsHook().test_connection()
        assert not ok
        assert spy[-1]["timeout"] == 0.2

    def test_token_auth_also_tries_iam_once(self, use_conn):
        port = closed_port()
        value = conn("http://127.0.0.1:1", auth_type="token", iam_endpoint=f"http://127.0.0.1:{port}")
        use_conn(value)
        with spy_requests() as spy:
            ok, message = ModelArtsHook().test_connection()
        assert not ok
        assert len(spy) == 1
        assert (
            f"POST /v3/auth/tokens got no answer from http://127.0.0.1:{port}: connection refused" in message
        )


class TestWording:
    def test_iam_refusal_says_iam(self, use_conn, requests_mock):
        use_conn(conn("http://modelarts.test", auth_type="token", iam_endpoint="http://iam.test"))
        requests_mock.post(
            "http://iam.test/v3/auth/tokens",
            status_code=401,
            json={"error": {"code": 401, "message": "The username or password is wrong."}},
        )
        with pytest.raises(ModelArtsAuthError) as info:
            ModelArtsHook(retry_wait=tenacity.wait_none()).get_training_job("job-1")
        assert str(info.value).startswith("IAM refused the credentials for POST /v3/auth/tokens")
        assert "ModelArts" not in str(info.value)
        assert info.value.status_code == 401

    def test_modelarts_refusal_still_says_modelarts(self, use_conn, requests_mock):
        use_conn(conn("http://modelarts.test"))
        requests_mock.get(
            f"http://modelarts.test/v2/{PID}/training-jobs/job-1",
            status_code=401,
            json={"error_code": "APIG.0301", "error_msg": "Incorrect IAM authentication information"},
        )
        with pytest.raises(ModelArtsAuthError, match=r"^ModelArts refused the credentials for GET"):
            ModelArtsHook().get_training_job("job-1")

    @pytest.mark.parametrize(
        ("change", "match"),
        [
            (lambda c: c["extra"].pop("project_id"), "extra 'project_id' is required"),
            (lambda c: c.pop("login"), "login is required"),
            (lambda c: c["extra"].update(endpoint="ftp://x"), "extra 'endpoint' must be"),
        ],
    )
    def test_config_errors_name_the_connection(self, use_conn, change, match):
        value = conn("http://modelarts.test")
        change(value)
        use_conn(value, "team_modelarts")
        with pytest.raises(ModelArtsConfigError, match=rf"^Connection 'team_modelarts': {match}"):
            ModelArtsHook("team_modelarts").get_training_job("job-1")

        async def go() -> None:
            await ModelArtsAsyncHook("team_modelarts").get_config()

        with pytest.raises(ModelArtsConfigError, match=rf"^Connection 'team_modelarts': {match}"):
            asyncio.run(go())

    def test_host_field_without_endpoint_is_named_as_unused(self, use_conn):
        value = conn("http://x")
        del value["extra"]["endpoint"]
        value["host"] = "127.0.0.1"
        use_conn(value)
        with pytest.raises(ModelArtsConfigError) as info:
            ModelArtsHook().get_training_job("job-1")
        assert "the host field ('127.0.0.1') is not used, put the URL in extra 'endpoint'" in str(info.value)

    def test_host_field_next_to_an_endpoint_is_reported_as_ignored(self, use_conn, caplog):
        value = conn("http://modelarts.test")
        value["host"] = "10.1.2.3"
        use_conn(value)
        with caplog.at_level(logging.WARNING, logger=connection_module.log.name):
            assert ModelArtsHook().config.endpoint == "http://modelarts.test"
        assert "the host field ('10.1.2.3') is ignored; ModelArts is reached at http://modelarts.test" in (
            caplog.text
        )


class TestConsoleUrl:
    def test_endpoint_only_connection_has_no_console(self, use_conn):
        use_conn(conn("http://127.0.0.1:8080"))
        assert ModelArtsHook().console_url("job-1") == ""

    def test_region_gives_the_console(self, use_conn):
        use_conn(conn("http://127.0.0.1:8080", region="cn-north-4"))
        assert ModelArtsHook().console_url("job-1").startswith("https://console.huaweicloud.com/modelarts/")
