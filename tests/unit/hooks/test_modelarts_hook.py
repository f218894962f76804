from __future__ import annotations

import asyncio
import json
import logging
import re
import threading
from datetime import datetime, timedelta, timezone
from unittest import mock

import httpx
import pytest
import requests
import requests_mock as rm
import tenacity

from airflow_provider_modelarts import auth, redaction
from airflow_provider_modelarts import connection as connection_module
from airflow_provider_modelarts.api_errors import build_api_error
from airflow_provider_modelarts.auth import TOKEN_CACHE, IamToken
from airflow_provider_modelarts.connection import ModelArtsConnectionConfig
from airflow_provider_modelarts.exceptions import (
    ModelArtsApiError,
    ModelArtsAuthError,
    ModelArtsConfigError,
    ModelArtsLogLinkExpiredError,
    ModelArtsNotFoundError,
    ModelArtsResponseError,
    ModelArtsTransportError,
    ModelArtsValidationError,
)
from airflow_provider_modelarts.hooks import answers as answers_module
from airflow_provider_modelarts.hooks import modelarts_async as async_hook_module
from airflow_provider_modelarts.hooks.modelarts import ModelArtsAsyncHook, ModelArtsHook
from airflow_provider_modelarts.retry import RetryAfterWait

AK = "HPUAEXAMPLEAK0000001"
SK = "ExampleSecretKey0000000000000000000000000"
PID = "0123456789abcdef0123456789abcdef"
BASE = "http://127.0.0.1:18080"
IAM = "http://127.0.0.1:18081"
JOB_URL = f"{BASE}/v2/{PID}/training-jobs/job-1"
SEARCH_URL = f"{BASE}/v2/{PID}/training-job-searches"
TOKEN_URL = f"{IAM}/v3/auth/tokens"
SIGNATURE = "AbC+dEf/GhIjKlMnOp=="
LOG_LINK = (
    "https://bucket.obs.cn-north-4.myhuaweicloud.com/logs/job-1-worker-0.log"
    f"?AccessKeyId=AK&Expires=1704067500&Signature={requests.utils.quote(SIGNATURE, safe='')}"
)


def _aksk_conn(**extra):
    return {
        "conn_type": "modelarts",
        "login": AK,
        "password": SK,
        "extra": {"project_id": PID, "endpoint": BASE, **extra},
    }


def _token_conn(**extra):
    return {
        "conn_type": "modelarts",
        "login": "iam-user",
        "password": "iam-password-123",
        "extra": {"project_id": PID, "endpoint": BASE, "auth_type": "token", "iam_endpoint": IAM, **extra},
    }


@pytest.fixture(autouse=True)
def _clean_token_cache():
    TOKEN_CACHE.clear()
    redaction.LINKS.clear()
    yield
    TOKEN_CACHE.clear()
    redaction.LINKS.clear()


@pytest.fixture
def use_conn(monkeypatch):
    def setter(conn: dict) -> None:
        monkeypatch.setenv("AIRFLOW_CONN_MODELARTS_DEFAULT", json.dumps(conn))

    return setter


@pytest.fixture
def hook(use_conn) -> ModelArtsHook:
    use_conn(_aksk_conn())
    return ModelArtsHook(retry_wait=tenacity.wait_none(), max_retries=3)


@pytest.fixture
def token_hook(use_conn) -> ModelArtsHook:
    use_conn(_token_conn())
    return ModelArtsHook(retry_wait=tenacity.wait_none(), max_retries=3)


def _iam_ok(token: str = "IAM-TOKEN-0001", *, hours: float = 24) -> dict:
    expires = (datetime.now(timezone.utc) + timedelta(hours=hours)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return {
        "status_code": 201,
        "headers": {"X-Subject-Token": token},
        "json": {"token": {"expires_at": expires}},
    }


def _verify_signature(request) -> bool:
    """Recompute the signature of a received request the way a server does (listed SignedHeaders only)."""
    match = re.fullmatch(
        r"SDK-HMAC-SHA256\s+Access=([^,]+),\s*SignedHeaders=([^,]+),\s*Signature=([0-9a-f]+)",
        request.headers["Authorization"],
    )
    assert match, request.headers["Authorization"]
    signed = match.group(2).split(";")
    headers = {name: request.headers[name] for name in signed}
    parts = requests.utils.urlparse(request.url)
    pairs = [tuple(requests.utils.unquote(x) for x in p.split("=", 1)) for p in parts.query.split("&") if p]
    body = request.body or b""
    canonical = "\n".join(
        [
            request.method,
            auth.canonical_uri(parts.path),
            auth.canonical_query(pairs),
            auth.canonical_headers(headers, signed),
            ";".join(signed),
            auth.payload_hash(body, headers),
        ]
    )
    expected = auth.signature(SK, auth.string_to_sign(canonical, request.headers["X-Sdk-Date"]))
    return expected == match.group(3)


# --------------------------------------------------------------------------------------------------
# Connection parsing
# --------------------------------------------------------------------------------------------------


class TestConnectionConfig:
    def test_aksk_from_env(self, hook):
        config = hook.config
        assert config.auth_type == "aksk"
        assert config.endpoint == BASE
        assert config.access_key == AK
        assert config.request_timeout == 30.0
        assert config.max_retries == 5
        assert config.verify is True
        assert SK not in repr(config)

    def test_region_builds_endpoints(self):
        config = ModelArtsConnectionConfig.from_fields(
            login="u", password="p", extra={"project_id": PID, "region": "cn-north-4", "auth_type": "token"}
        )
        assert config.endpoint == "https://modelarts.cn-north-4.myhuaweicloud.com"
        assert config.iam_endpoint == "https://iam.cn-north-4.myhuaweicloud.com"
        assert config.domain_name == "u"

    def test_hong_kong_uses_cn_domain(self):
        config = ModelArtsConnectionConfig.from_fields(
            login=AK, password=SK, extra={"project_id": PID, "region": "ap-southeast-1"}
        )
        assert config.endpoint == "https://modelarts.ap-southeast-1.myhuaweicloud.cn"

    def test_extra_as_json_string_and_typed_values(self, tmp_path):
        ca = tmp_path / "ca.pem"
        ca.write_text("x")
        extra = json.dumps(
            {
                "project_id": PID,
                "endpoint": BASE + "/",
                "verify": str(ca),
                "request_timeout": "2.5",
                "max_retries": "0",
            }
        )
        config = ModelArtsConnectionConfig.from_fields(login=AK, password=SK, extra=extra)
        assert config.endpoint == BASE
        assert config.verify == str(ca)
        assert config.request_timeout == 2.5
        assert config.max_retries == 0

    @pytest.mark.parametrize(
        ("value", "expected"), [("false", False), ("TRUE", True), (False, False), (None, True)]
    )
    def test_verify_values(self, value, expected):
        config = ModelArtsConnectionConfig.from_fields(
            login=AK, password=SK, extra={"project_id": PID, "endpoint": BASE, "verify": value}
        )
        assert config.verify is expected

    @pytest.mark.parametrize(
        ("login", "password", "extra", "field"),
        [
            (AK, SK, {"endpoint": BASE}, "project_id"),
            (AK, SK, {"project_id": "", "endpoint": BASE}, "project_id"),
            (AK, SK, {"project_id": "bad/id", "endpoint": BASE}, "project_id"),
            (AK, SK, {"project_id": "x" * 65, "endpoint": BASE}, "project_id"),
            (AK, SK, {"project_id": PID}, "region"),
            (AK, SK, {"project_id": PID, "region": "CN North"}, "region"),
            (AK, SK, {"project_id": PID, "endpoint": "ftp://h"}, "endpoint"),
            (AK, SK, {"project_id": PID, "endpoint": "127.0.0.1:80"}, "endpoint"),
            (AK, SK, {"project_id": PID, "endpoint": "http://h/v2"}, "endpoint"),
            (AK, SK, {"project_id": PID, "endpoint": "http://h?x=1"}, "endpoint"),
            (AK, SK, {"project_id": PID, "endpoint": "http://h:notaport"}, "endpoint"),
            (AK, SK, {"project_id": PID, "endpoint": 5}, "endpoint"),
            (AK, SK, {"project_id": PID, "endpoint": BASE, "auth_type": "oauth"}, "auth_type"),
            (None, SK, {"project_id": PID, "endpoint": BASE}, "login"),
            (AK, None, {"project_id": PID, "endpoint": BASE}, "password"),
            ("u", "p", {"project_id": PID, "endpoint": BASE, "auth_type": "token"}, "iam_endpoint"),
            (
                "u",
                "p",
                {"project_id": PID, "endpoint": BASE, "auth_type": "token", "iam_endpoint": "x"},
                "iam_endpoint",
            ),
            (
                "u",
                "p",
                {"project_id": PID, "region": "cn-north-4", "auth_type": "token", "security_token": "t"},
                "security_token",
            ),
            (None, "p", {"project_id": PID, "region": "cn-north-4", "auth_type": "token"}, "login"),
            (AK, SK, {"project_id": PID, "endpoint": BASE, "verify": "/no/such/ca.pem"}, "verify"),
            (AK, SK, {"project_id": PID, "endpoint": BASE, "verify": 3}, "verify"),
            (AK, SK, {"project_id": PID, "endpoint": BASE, "request_timeout": 0}, "request_timeout"),
            (AK, SK, {"project_id": PID, "endpoint": BASE, "request_timeout": -1}, "request_timeout"),
            (AK, SK, {"project_id": PID, "endpoint": BASE, "request_timeout": "soon"}, "request_timeout"),
            (AK, SK, {"project_id": PID, "endpoint": BASE, "max_retries": -1}, "max_retries"),
            (AK, SK, {"project_id": PID, "endpoint": BASE, "max_retries": 1.5}, "max_retries"),
            (AK, SK, {"project_id": PID, "endpoint": BASE, "max_retries": "many"}, "max_retries"),
            (AK, SK, "not json", "JSON object"),
            (AK, SK, "[1, 2]", "JSON object"),
        ],
    )
    def test_errors_name_the_field(self, login, password, extra, field):
        with pytest.raises(ModelArtsConfigError, match=re.escape(field)):
            ModelArtsConnectionConfig.from_fields(login=login, password=password, extra=extra)

    def test_config_error_before_any_request(self, use_conn):
        use_conn({"conn_type": "modelarts", "login": AK, "password": SK, "extra": {"endpoint": BASE}})
        with rm.Mocker() as m, pytest.raises(ModelArtsConfigError, match="project_id"):
            ModelArtsHook().get_training_job("job-1")
        assert m.call_count == 0

    def test_verify_false_warns_once_per_process(self, use_conn, monkeypatch):
        use_conn(_aksk_conn(verify="false"))
        monkeypatch.setattr(connection_module, "_verify_warned", False)
        with mock.patch.object(connection_module, "log") as log:
            for _ in range(3):
                assert ModelArtsHook().config.verify is False
        assert log.warning.call_count == 1

    def test_ui_field_behaviour(self):
        behaviour = ModelArtsHook.get_ui_field_behaviour()
        assert "host" in behaviour["hidden-fields"]
        assert "login" in behaviour["relabeling"]


# --------------------------------------------------------------------------------------------------
# Signing on the wire
# --------------------------------------------------------------------------------------------------


class TestAkSkRequests:
    def test_get_training_job_is_signed(self, hook, requests_mock):
        requests_mock.get(JOB_URL, json={"metadata": {"id": "job-1"}, "status": {"phase": "Running"}})
        assert hook.get_training_job("job-1")["status"]["phase"] == "Running"
        request = requests_mock.last_request
        assert request.headers["X-Project-Id"] == PID
        assert request.headers["Host"] == "127.0.0.1:18080"
        assert request.headers["Content-Type"] == "application/json"
        assert "X-Auth-Token" not in request.headers
        signed = request.headers["Authorization"].split("SignedHeaders=")[1].split(",")[0]
        assert signed == "content-type;host;user-agent;x-project-id;x-sdk-date"
        assert _verify_signature(request)

    def test_security_token_is_sent_and_signed(self, use_conn, requests_mock):
        use_conn(_aksk_conn(security_token="TEMPORARY-SECURITY-TOKEN"))
        requests_mock.get(JOB_URL, json={})
        ModelArtsHook().get_training_job("job-1")
        request = requests_mock.last_request
        assert request.headers["X-Security-Token"] == "TEMPORARY-SECURITY-TOKEN"
        assert "x-security-token" in request.headers["Authorization"]
        assert _verify_signature(request)

    @pytest.mark.parametrize(
        ("download", "content_type"), [(False, "text/plain"), (True, "application/octet-stream")]
    )
    def test_log_url_content_type(self, hook, requests_mock, download, content_type):
        requests_mock.get(f"{JOB_URL}/tasks/worker-0/logs/url", json={"obs_url": LOG_LINK})
        assert hook.get_task_log_url("job-1", "worker-0", download=download) == LOG_LINK
        request = requests_mock.last_request
        assert request.headers["Content-Type"] == content_type
        assert request.headers["X-Sdk-Content-Sha256"] == "UNSIGNED-PAYLOAD"
        assert _verify_signature(request)

    def test_post_body_signed(self, hook, requests_mock):
        requests_mock.post(f"{JOB_URL}/actions", json={"status": {"phase": "Terminating"}})
        hook.stop_training_job("job-1")
        request = requests_mock.last_request
        assert json.loads(request.body) == {"action_type": "terminate"}
        assert _verify_signature(request)

    @pytest.mark.parametrize(
        ("job_id", "segment"), [("a%2Fb*", "a%252Fb%2A"), ("j\u00fc-1", "j%C3%BC-1"), ("x:y@z", "x%3Ay%40z")]
    )
    def test_path_segments_are_quoted(self, hook, requests_mock, job_id, segment):
        # A literal '%' is itself quoted, so no id can smuggle an escape (e.g. %2F) into the path.
        requests_mock.get(re.compile(".*"), json={})
        hook.get_training_job(job_id)
        assert requests_mock.last_request.url == f"{BASE}/v2/{PID}/training-jobs/{segment}"
        assert _verify_signature(requests_mock.last_request)

    def test_every_request_has_a_timeout(self, use_conn):
        use_conn(_aksk_conn(request_timeout=7))
        hook = ModelArtsHook()
        with mock.patch.object(requests.Session, "request") as request:
            request.return_value = mock.Mock(status_code=200, content=b"{}", headers={})
            hook.get_training_job("job-1")
        assert request.call_args.kwargs["timeout"] == 7
        assert ModelArtsHook(request_timeout=2).options.timeout_for(hook.config) == 2


class TestValidation:
    @pytest.mark.parametrize(
        "bad",
        [
            "",
            "a/b",
            "a?b",
            "a#b",
            "a b",
            "a\tb",
            "a\nb",
            "..",
            "a..b",
            ".",
            "a\\b",
            "x" * 257,
            None,
            5,
            "a\x00b",
        ],
    )
    def test_bad_job_ids_rejected_without_request(self, hook, bad):
        with rm.Mocker() as m:
            with pytest.raises(ModelArtsValidationError):
                hook.get_training_job(bad)
            with pytest.raises(ModelArtsValidationError):
                hook.preview_task_log("job-1", bad)
            with pytest.raises(ModelArtsValidationError):
                hook.get_task_log_url(bad, "worker-0")
        assert m.call_count == 0

    def test_max_length_id_accepted(self, hook, requests_mock):
        requests_mock.get(re.compile(".*"), json={})
        hook.get_training_job("x" * 256)

    @pytest.mark.parametrize("page_size", [0, 51, True, "10"])
    def test_bad_page_size(self, hook, page_size):
        with pytest.raises(ModelArtsValidationError):
            hook.list_training_jobs(page_size=page_size)

    @pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://h/x", "/relative", "", None])
    def test_open_log_stream_rejects_non_http(self, hook, url):
        with pytest.raises(ModelArtsValidationError):
            hook.open_log_stream(url)


# --------------------------------------------------------------------------------------------------
# Token auth
# --------------------------------------------------------------------------------------------------


class TestTokenAuth:
    def test_token_fetched_once_across_calls_and_instances(self, token_hook, requests_mock):
        iam = requests_mock.post(TOKEN_URL, **_iam_ok())
        api = requests_mock.get(JOB_URL, json={})
        for _ in range(3):
            token_hook.get_training_job("job-1")
        for _ in range(3):
            ModelArtsHook(retry_wait=tenacity.wait_none()).get_training_job("job-1")
        assert iam.call_count == 1
        assert api.call_count == 6
        assert api.last_request.headers["X-Auth-Token"] == "IAM-TOKEN-0001"
        assert "Authorization" not in api.last_request.headers
        body = iam.last_request.json()
        assert body["auth"]["scope"] == {"project": {"id": PID}}
        assert body["auth"]["identity"]["password"]["user"]["domain"] == {"name": "iam-user"}

    def test_refreshed_before_expiry(self, token_hook, requests_mock):
        iam = requests_mock.post(
            TOKEN_URL, [_iam_ok("TOKEN-ABOUT-TO-EXPIRE", hours=0.1), _iam_ok("TOKEN-NEW-00001")]
        )
        api = requests_mock.get(JOB_URL, json={})
        token_hook.get_training_job("job-1")
        token_hook.get_training_job("job-1")
        assert iam.call_count == 2
        assert api.last_request.headers["X-Auth-Token"] == "TOKEN-NEW-00001"

    def test_one_reauth_on_401(self, token_hook, requests_mock):
        iam = requests_mock.post(TOKEN_URL, [_iam_ok("TOKEN-REVOKED-001"), _iam_ok("TOKEN-FRESH-0001")])
        api = requests_mock.get(
            JOB_URL,
            [
                {
                    "status_code": 401,
                    "json": {"error_code": "ModelArts.0202", "error_msg": "token has expired"},
                },
                {"json": {"ok": True}},
            ],
        )
        assert token_hook.get_training_job("job-1") == {"ok": True}
        assert iam.call_count == 2
        assert api.call_count == 2
        assert api.request_history[1].headers["X-Auth-Token"] == "TOKEN-FRESH-0001"

    def test_persistent_401_reauths_only_once(self, token_hook, requests_mock):
        iam = requests_mock.post(TOKEN_URL, **_iam_ok())
        api = requests_mock.get(
            JOB_URL, status_code=401, json={"error_code": "APIG.0301", "error_msg": "bad"}
        )
        with pytest.raises(ModelArtsAuthError) as info:
            token_hook.get_training_job("job-1")
        assert info.value.status_code == 401
        assert iam.call_count == 2
        assert api.call_count == 2

    def test_403_does_not_reauth(self, token_hook, requests_mock):
        iam = requests_mock.post(TOKEN_URL, **_iam_ok())
        api = requests_mock.get(
            JOB_URL, status_code=403, json={"error_code": "ModelArts.0108", "error_msg": "no"}
        )
        with pytest.raises(ModelArtsAuthError):
            token_hook.get_training_job("job-1")
        assert (iam.call_count, api.call_count) == (1, 1)

    def test_bad_iam_password(self, token_hook, requests_mock):
        requests_mock.post(
            TOKEN_URL, status_code=401, json={"error": {"code": 401, "message": "bad password"}}
        )
        api = requests_mock.get(JOB_URL, json={})
        with pytest.raises(ModelArtsAuthError, match="bad password"):
            token_hook.get_training_job("job-1")
        assert api.call_count == 0

    @pytest.mark.parametrize(
        "answer",
        [
            {"status_code": 201, "json": {"token": {"expires_at": "2099-01-01T00:00:00Z"}}},
            {"status_code": 201, "headers": {"X-Subject-Token": "TOKEN-ABCDEFG"}, "text": "<html>"},
        ],
    )
    def test_malformed_iam_answer(self, token_hook, requests_mock, answer):
        requests_mock.post(TOKEN_URL, **answer)
        with pytest.raises(ModelArtsResponseError):
            token_hook.get_training_job("job-1")

    def test_iam_5xx_retried(self, token_hook, requests_mock):
        iam = requests_mock.post(TOKEN_URL, [{"status_code": 502, "text": "bad gateway"}, _iam_ok()])
        requests_mock.get(JOB_URL, json={})
        token_hook.get_training_job("job-1")
        assert iam.call_count == 2


# --------------------------------------------------------------------------------------------------
# Retries
# --------------------------------------------------------------------------------------------------


class TestRetries:
    @pytest.mark.parametrize("status", [500, 502, 503, 504, 429])
    def test_transient_then_success(self, hook, requests_mock, status):
        api = requests_mock.get(
            JOB_URL,
            [{"status_code": status, "json": {"error_code": "APIG.0308", "error_msg": "x"}}] * 2
            + [{"json": {}}],
        )
        assert hook.get_training_job("job-1") == {}
        assert api.call_count == 3

    def test_gives_up_after_max_retries(self, hook, requests_mock):
        api = requests_mock.get(
            JOB_URL, status_code=429, json={"error_code": "APIG.0308", "error_msg": "throttled"}
        )
        with pytest.raises(ModelArtsApiError) as info:
            hook.get_training_job("job-1")
        assert api.call_count == 4  # 1 + max_retries=3
        assert info.value.error_code == "APIG.0308"
        assert info.value.is_retryable

    def test_max_retries_from_connection(self, use_conn, requests_mock):
        use_conn(_aksk_conn(max_retries=1))
        api = requests_mock.get(JOB_URL, status_code=503, text="")
        with pytest.raises(ModelArtsApiError):
            ModelArtsHook(retry_wait=tenacity.wait_none()).get_training_job("job-1")
        assert api.call_count == 2

    @pytest.mark.parametrize("exc", [requests.ConnectionError, requests.ConnectTimeout, requests.ReadTimeout])
    def test_transport_errors_retried(self, hook, requests_mock, exc):
        api = requests_mock.get(JOB_URL, exc=exc)
        with pytest.raises(ModelArtsTransportError) as info:
            hook.get_training_job("job-1")
        assert api.call_count == 4
        assert info.value.is_retryable
        assert isinstance(info.value.__cause__, exc)

    @pytest.mark.parametrize("status", [400, 401, 403, 404, 405, 409])
    def test_other_4xx_not_retried(self, hook, requests_mock, status):
        api = requests_mock.get(
            JOB_URL, status_code=status, json={"error_code": "ModelArts.0104", "error_msg": "no"}
        )
        with pytest.raises(ModelArtsApiError) as info:
            hook.get_training_job("job-1")
        assert api.call_count == 1
        assert not info.value.is_retryable

    def test_new_date_signed_per_attempt(self, hook, requests_mock):
        api = requests_mock.get(JOB_URL, [{"status_code": 503, "text": ""}, {"json": {}}])
        with mock.patch.object(auth.time, "strftime", side_effect=["20240101T000000Z", "20240101T000100Z"]):
            hook.get_training_job("job-1")
        assert [r.headers["X-Sdk-Date"] for r in api.request_history] == [
            "20240101T000000Z",
            "20240101T000100Z",
        ]


def _state_after(exc: BaseException, attempt: int = 1) -> tenacity.RetryCallState:
    state = tenacity.RetryCallState(retry_object=tenacity.Retrying(), fn=None, args=(), kwargs={})
    state.attempt_number = attempt
    state.set_exception((type(exc), exc, None))
    return state


class TestRetryAfter:
    def _error(self, retry_after: str | None, status: int = 429):
        headers = {"Retry-After": retry_after} if retry_after is not None else {}
        return build_api_error(status, headers, b'{"error_code":"APIG.0308"}', method="GET", path="/x")

    def test_retry_after_seconds_honoured(self):
        wait = RetryAfterWait(tenacity.wait_none())
        assert wait(_state_after(self._error("7"))) == 7.0

    def test_retry_after_capped(self):
        assert RetryAfterWait(tenacity.wait_none(), cap=60)(_state_after(self._error("3600"))) == 60.0

    def test_retry_after_http_date(self):
        when = (datetime.now(timezone.utc) + timedelta(seconds=30)).strftime("%a, %d %b %Y %H:%M:%S GMT")
        assert 25 <= RetryAfterWait(tenacity.wait_none())(_state_after(self._error(when))) <= 30

    def test_backoff_when_no_header_and_backoff_wins_when_larger(self):
        wait = RetryAfterWait(tenacity.wait_fixed(5))
        assert wait(_state_after(self._error(None))) == 5
        assert wait(_state_after(self._error("2"))) == 5

    def test_default_backoff_is_exponential_with_jitter(self):
        wait = RetryAfterWait()
        first = wait(_state_after(self._error(None), attempt=1))
        fourth = wait(_state_after(self._error(None), attempt=4))
        assert 1 <= first <= 2
        assert 8 <= fourth <= 9

    def test_hook_default_policy_sleeps_retry_after(self, use_conn, requests_mock, monkeypatch):
        use_conn(_aksk_conn())
        sleeps: list[float] = []
        monkeypatch.setattr(tenacity.nap.time, "sleep", sleeps.append)
        requests_mock.get(
            JOB_URL,
            [
                {"status_code": 429, "headers": {"Retry-After": "12"}, "json": {"error_code": "APIG.0308"}},
                {"json": {}},
            ],
        )
        ModelArtsHook().get_training_job("job-1")
        assert len(sleeps) == 1
        assert 12 <= sleeps[0] <= 13

    def test_garbage_retry_after_ignored(self):
        assert RetryAfterWait(tenacity.wait_none())(_state_after(self._error("soon"))) == 0


# --------------------------------------------------------------------------------------------------
# Error shapes
# --------------------------------------------------------------------------------------------------


class TestErrors:
    @pytest.mark.parametrize(
        ("body", "code", "msg"),
        [
            (
                {"error_code": "ModelArts.0104", "error_msg": "Parameter error"},
                "ModelArts.0104",
                "Parameter error",
            ),
            ({"errorCode": "E1", "errorMsg": "camel"}, "E1", "camel"),
            ({"code": "C1", "message": "plain"}, "C1", "plain"),
            ({"error": {"code": 400, "message": "nested"}}, "400", "nested"),
        ],
    )
    def test_json_error_shapes(self, hook, requests_mock, body, code, msg):
        requests_mock.get(JOB_URL, status_code=400, json=body, headers={"X-Request-Id": "req-123"})
        with pytest.raises(ModelArtsApiError) as info:
            hook.get_training_job("job-1")
        err = info.value
        assert (err.status_code, err.error_code, err.error_msg, err.request_id) == (400, code, msg, "req-123")
        assert (err.method, err.path) == ("GET", f"/v2/{PID}/training-jobs/job-1")

    @pytest.mark.parametrize(
        ("text", "expected_msg"),
        [
            ("<html><body>502 Bad Gateway</body></html>", "<html><body>502 Bad Gateway</body></html>"),
            ('{"error_code": "ModelArts.0', '{"error_code": "ModelArts.0'),
            ("", None),
        ],
    )
    def test_non_json_error_bodies(self, hook, requests_mock, text, expected_msg):
        requests_mock.get(JOB_URL, status_code=400, text=text, headers={"X-Request-Id": "req-9"})
        with pytest.raises(ModelArtsApiError) as info:
            hook.get_training_job("job-1")
        assert info.value.error_msg == expected_msg
        assert info.value.error_code is None
        assert info.value.request_id == "req-9"

    def test_request_id_from_body(self, hook, requests_mock):
        requests_mock.get(
            JOB_URL, status_code=401, json={"error_code": "APIG.0301", "error_msg": "x", "request_id": "r1"}
        )
        with pytest.raises(ModelArtsAuthError) as info:
            hook.get_training_job("job-1")
        assert info.value.request_id == "r1"

    @pytest.mark.parametrize(
        ("status", "body"),
        [
            (404, {"error_code": "ModelArts.2836", "error_msg": "x"}),
            (400, {"error_code": "ModelArts.2775", "error_msg": "x"}),
        ],
    )
    def test_not_found_names_job(self, hook, requests_mock, status, body):
        requests_mock.get(JOB_URL, status_code=status, json=body)
        with pytest.raises(ModelArtsNotFoundError, match="'job-1'"):
            hook.get_training_job("job-1")

    @pytest.mark.parametrize("status", [401, 403])
    def test_auth_errors(self, hook, requests_mock, status):
        requests_mock.get(
            JOB_URL, status_code=status, json={"error_code": "APIG.0301", "error_msg": "verify fail"}
        )
        with pytest.raises(ModelArtsAuthError):
            hook.get_training_job("job-1")

    @pytest.mark.parametrize("answer", [{"text": "<html>ok</html>"}, {"text": '{"trunc'}, {"json": [1, 2]}])
    def test_2xx_not_a_json_object(self, hook, requests_mock, answer):
        requests_mock.get(JOB_URL, **answer)
        with pytest.raises(ModelArtsResponseError):
            hook.get_training_job("job-1")

    @pytest.mark.parametrize(
        "payload",
        [
            {},
            {"obs_url": None},
            {"obs_url": "file:///etc/passwd"},
            {"obs_url": "ftp://bucket/x.log"},
            {"obs_url": "/relative/x.log"},
            {"obs_url": "https://"},
            ["https://x"],
        ],
    )
    def test_bad_obs_url(self, hook, requests_mock, payload):
        requests_mock.get(f"{JOB_URL}/tasks/worker-0/logs/url", json=payload)
        with pytest.raises(ModelArtsResponseError):
            hook.get_task_log_url("job-1", "worker-0")

    def test_3xx_is_an_error(self, hook, requests_mock):
        requests_mock.get(JOB_URL, status_code=302, headers={"Location": "http://elsewhere/"})
        with pytest.raises(ModelArtsApiError) as info:
            hook.get_training_job("job-1")
        assert info.value.status_code == 302


# --------------------------------------------------------------------------------------------------
# Masking
# --------------------------------------------------------------------------------------------------


class TestMasking:
    def test_connection_secrets_registered(self, use_conn):
        use_conn(_aksk_conn(security_token="TEMPORARY-SECURITY-TOKEN"))
        with mock.patch.object(connection_module, "mask_secret") as mask:
            ModelArtsHook().config  # noqa: B018
        masked = {c.args[0] for c in mask.call_args_list}
        assert {SK, "TEMPORARY-SECURITY-TOKEN"} <= masked

    def test_password_and_token_registered(self, token_hook, requests_mock):
        requests_mock.post(TOKEN_URL, **_iam_ok("IAM-TOKEN-SECRET-VALUE"))
        requests_mock.get(JOB_URL, json={})
        mask = mock.Mock()
        with (
            mock.patch.object(connection_module, "mask_secret", mask),
            mock.patch.object(answers_module, "mask_secret", mask),
        ):
            token_hook.get_training_job("job-1")
        masked = {c.args[0] for c in mask.call_args_list}
        assert {"iam-password-123", "IAM-TOKEN-SECRET-VALUE"} <= masked

    def test_log_link_signature_masked_in_every_form(self, hook, requests_mock):
        token = "STS/token+value=="
        link = LOG_LINK + "&x-obs-security-token=" + requests.utils.quote(token, safe="")
        requests_mock.get(f"{JOB_URL}/tasks/worker-0/logs/url", json={"obs_url": link})
        with mock.patch.object(redaction, "mask_secret") as mask:
            hook.get_task_log_url("job-1", "worker-0")
        masked = {c.args[0] for c in mask.call_args_list}
        encoded = requests.utils.quote(SIGNATURE, safe="")
        assert {SIGNATURE, encoded, token, requests.utils.quote(token, safe="")} <= masked
        assert "AK" not in masked

    def test_secret_masker_redacts_signature(self, hook, requests_mock):
        from airflow.providers.common.compat.sdk import redact

        requests_mock.get(f"{JOB_URL}/tasks/worker-0/logs/url", json={"obs_url": LOG_LINK})
        link = hook.get_task_log_url("job-1", "worker-0")
        redacted = redact(f"link={link} raw={SIGNATURE}")
        assert SIGNATURE not in redacted
        assert requests.utils.quote(SIGNATURE, safe="") not in redacted

    def test_no_secret_in_error_messages(self, hook, requests_mock):
        requests_mock.get(
            LOG_LINK.split("?", maxsplit=1)[0], exc=requests.ConnectionError(f"refused {LOG_LINK}")
        )
        with pytest.raises(ModelArtsTransportError) as info:
            hook.open_log_stream(LOG_LINK)
        assert "Signature" not in str(info.value)

    def test_urllib3_records_lose_link_secrets(self, caplog):
        token = "STS/token+value=="
        target = LOG_LINK.split(".com", 1)[1] + "&x-obs-security-token=" + token
        logger = logging.getLogger("urllib3.connectionpool")
        with caplog.at_level(logging.DEBUG, logger="urllib3"):
            logger.debug(
                '%s://%s:%s "%s %s %s" %s %s', "https", "obs", 443, "GET", target, "HTTP/1.1", 200, 5
            )
            logging.getLogger("urllib3.util.retry").debug(
                "Incremented Retry for (url='%s'): %r", target, {"history": [target]}
            )
        assert len(caplog.records) == 2
        for record in caplog.records:
            message = record.getMessage()
            assert "/logs/job-1-worker-0.log?AccessKeyId=AK&Expires=1704067500&" in message
            assert "Signature=***" in message and "x-obs-security-token=***" in message
            for secret in (SIGNATURE, token, requests.utils.quote(SIGNATURE, safe="")):
                assert secret not in message
        assert "GET " in caplog.records[0].getMessage() and "200 5" in caplog.records[0].getMessage()

    def test_urllib3_filter_installed_once(self):
        redaction.install_urllib3_log_filter()
        redaction.install_urllib3_log_filter()
        filters = logging.getLogger("urllib3.connectionpool").filters
        assert sum(isinstance(f, redaction.SignedUrlLogFilter) for f in filters) == 1

    def test_redact_signed_url_secrets_keeps_other_text(self):
        text = "see /b/k?Expires=1&X-Amz-Signature=abc&signature=d%2Be and Signature= plain"
        assert redaction.redact_signed_url_secrets(text) == (
            "see /b/k?Expires=1&X-Amz-Signature=***&signature=*** and Signature= plain"
        )


# --------------------------------------------------------------------------------------------------
# API methods
# --------------------------------------------------------------------------------------------------


def _job(i: int, phase: str = "Running", created: int = 1000) -> dict:
    return {"metadata": {"id": f"job-{i}", "create_time": created + i}, "status": {"phase": phase}}


class TestApiMethods:
    def test_list_pages_until_short_page(self, hook, requests_mock):
        api = requests_mock.post(
            SEARCH_URL,
            [
                {"json": {"total": 5, "items": [_job(1), _job(2)]}},
                {"json": {"total": 5, "items": [_job(3), _job(4)]}},
                {"json": {"total": 5, "items": [_job(5)]}},
            ],
        )
        jobs = hook.list_training_jobs(page_size=2)
        assert [j["metadata"]["id"] for j in jobs] == ["job-1", "job-2", "job-3", "job-4", "job-5"]
        assert [r.json()["offset"] for r in api.request_history] == [0, 1, 2]
        assert all(r.json()["limit"] == 2 for r in api.request_history)

    def test_list_stops_at_total(self, hook, requests_mock):
        api = requests_mock.post(SEARCH_URL, json={"total": 2, "items": [_job(1), _job(2)]})
        assert len(hook.list_training_jobs(page_size=2)) == 2
        assert api.call_count == 1

    def test_list_filters_sent_and_applied(self, hook, requests_mock):
        api = requests_mock.post(
            SEARCH_URL,
            json={"items": [_job(1, "Running"), _job(2, "Completed"), _job(3, "Running", created=5000)]},
        )
        jobs = hook.list_training_jobs(phases=["Running"], created_after_ms=1000, created_before_ms=2000)
        assert [j["metadata"]["id"] for j in jobs] == ["job-1"]
        filters = api.last_request.json()["filters"]
        assert {"key": "phase", "operator": "in", "value": ["Running"]} in filters
        assert {"key": "create_time", "operator": "between", "value": ["1000", "2000"]} in filters

    def test_list_items_not_a_list(self, hook, requests_mock):
        requests_mock.post(SEARCH_URL, json={"items": "nope"})
        with pytest.raises(ModelArtsResponseError):
            hook.list_training_jobs()

    def test_preview(self, hook, requests_mock):
        requests_mock.get(
            f"{JOB_URL}/tasks/worker-0/logs/preview",
            json={"content": "héllo\n", "current_size": 7, "full_size": 99},
        )
        assert hook.preview_task_log("job-1", "worker-0") == {
            "content": "héllo\n",
            "current_size": 7,
            "full_size": 99,
        }

    def test_preview_old_field_name_and_missing_sizes(self, hook, requests_mock):
        requests_mock.get(f"{JOB_URL}/tasks/worker-0/logs/preview", json={"context": "héllo"})
        assert hook.preview_task_log("job-1", "worker-0") == {
            "content": "héllo",
            "current_size": 6,
            "full_size": 6,
        }

    def test_preview_without_content(self, hook, requests_mock):
        requests_mock.get(f"{JOB_URL}/tasks/worker-0/logs/preview", json={"full_size": 3})
        with pytest.raises(ModelArtsResponseError):
            hook.preview_task_log("job-1", "worker-0")

    @pytest.mark.parametrize("payload", [[{"task": "worker-0"}], {"tasks": [{"task": "worker-0"}]}])
    def test_list_tasks(self, hook, requests_mock, payload):
        requests_mock.get(f"{JOB_URL}/tasks", json=payload)
        assert hook.list_training_job_tasks("job-1") == [{"task": "worker-0"}]

    def test_test_connection_ok(self, hook, requests_mock):
        api = requests_mock.post(SEARCH_URL, json={"total": 0, "items": []})
        ok, message = hook.test_connection()
        assert ok, message
        assert api.last_request.json()["limit"] == 1

    def test_test_connection_failure_never_raises(self, hook, requests_mock):
        requests_mock.post(
            SEARCH_URL, status_code=401, json={"error_code": "APIG.0301", "error_msg": "verify aksk"}
        )
        ok, message = hook.test_connection()
        assert not ok
        assert "APIG.0301" in message

    def test_test_connection_config_error(self, use_conn):
        use_conn({"conn_type": "modelarts", "login": AK, "password": SK, "extra": "{bad"})
        ok, message = ModelArtsHook().test_connection()
        assert not ok
        assert "JSON" in message

    def test_console_url(self, use_conn):
        use_conn(_aksk_conn(region="cn-north-4", endpoint=None))
        assert ModelArtsHook().console_url("job-1") == (
            "https://console.huaweicloud.com/modelarts/?region=cn-north-4#/trainingJobs/job-1"
        )

    def test_console_url_region_from_endpoint(self, use_conn):
        use_conn(_aksk_conn(endpoint="https://modelarts.ap-southeast-3.myhuaweicloud.com"))
        assert (
            ModelArtsHook()
            .console_url("job-1")
            .startswith("https://console-intl.huaweicloud.com/modelarts/?region=ap-southeast-3")
        )

    def test_log_url_expires_at(self):
        assert ModelArtsHook.log_url_expires_at(LOG_LINK) == datetime.fromtimestamp(
            1704067500, tz=timezone.utc
        )
        v4 = "https://b.obs/x?X-Amz-Date=20240101T000000Z&X-Amz-Expires=300&X-Amz-Signature=abc"
        assert ModelArtsHook.log_url_expires_at(v4) == datetime(2024, 1, 1, 0, 5, tzinfo=timezone.utc)
        guess = ModelArtsHook.log_url_expires_at("https://b.obs/x", default_ttl=60)
        assert abs((guess - datetime.now(timezone.utc)).total_seconds() - 60) < 5


class TestOpenLogStream:
    OBJECT = LOG_LINK.split("?", maxsplit=1)[0]

    def test_range_and_no_auth_headers(self, hook, requests_mock):
        requests_mock.get(self.OBJECT, status_code=206, content=b"tail")
        response = hook.open_log_stream(LOG_LINK, offset=10)
        assert response.status_code == 206
        assert response.raw.read() == b"tail"
        request = requests_mock.last_request
        assert request.headers["Range"] == "bytes=10-"
        assert "Authorization" not in request.headers
        assert request.url == LOG_LINK

    def test_no_range_from_zero(self, hook, requests_mock):
        requests_mock.get(self.OBJECT, content=b"all")
        hook.open_log_stream(LOG_LINK)
        assert "Range" not in requests_mock.last_request.headers

    def test_expired_link(self, hook, requests_mock):
        body = (
            "<?xml version='1.0' encoding='UTF-8'?><Error><Code>RequestTimeTooSkewed</Code>"
            "<Message>Request has expired.</Message><RequestId>R1</RequestId></Error>"
        )
        api = requests_mock.get(
            self.OBJECT, status_code=403, text=body, headers={"Content-Type": "application/xml"}
        )
        with pytest.raises(ModelArtsLogLinkExpiredError):
            hook.open_log_stream(LOG_LINK)
        assert api.call_count == 1

    def test_other_obs_error_code_from_xml(self, hook, requests_mock):
        body = "<Error><Code>NoSuchKey</Code><Message>gone</Message><RequestId>R2</RequestId></Error>"
        requests_mock.get(self.OBJECT, status_code=404, text=body)
        with pytest.raises(ModelArtsApiError) as info:
            hook.open_log_stream(LOG_LINK)
        assert (info.value.error_code, info.value.error_msg, info.value.request_id) == (
            "NoSuchKey",
            "gone",
            "R2",
        )

    def test_5xx_retried(self, hook, requests_mock):
        api = requests_mock.get(self.OBJECT, [{"status_code": 503, "text": "busy"}, {"content": b"ok"}])
        assert hook.open_log_stream(LOG_LINK).raw.read() == b"ok"
        assert api.call_count == 2

    def test_negative_offset(self, hook):
        with pytest.raises(ModelArtsValidationError):
            hook.open_log_stream(LOG_LINK, offset=-1)


# --------------------------------------------------------------------------------------------------
# Async hook
# --------------------------------------------------------------------------------------------------


class _Recorder:
    def __init__(self, handler):
        self.handler = handler
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.handler(request, len(self.requests))


def _run(coro):
    return asyncio.run(coro)


class TestAsyncHook:
    def _hook(self, handler, **kwargs):
        recorder = _Recorder(handler)
        hook = ModelArtsAsyncHook(
            retry_wait=tenacity.wait_none(), max_retries=3, transport=httpx.MockTransport(recorder), **kwargs
        )
        return hook, recorder

    def test_get_training_job_signed(self, use_conn):
        use_conn(_aksk_conn())
        hook, rec = self._hook(lambda req, n: httpx.Response(200, json={"status": {"phase": "Completed"}}))

        async def go():
            try:
                return await hook.get_training_job("job-1")
            finally:
                await hook.close()

        assert _run(go())["status"]["phase"] == "Completed"
        request = rec.requests[0]
        assert str(request.url) == JOB_URL
        assert request.headers["Host"] == "127.0.0.1:18080"
        wrapped = requests.Request(
            request.method, str(request.url), headers=dict(request.headers), data=request.content
        ).prepare()
        assert _verify_signature(wrapped)

    def test_client_built_once_off_the_loop_for_concurrent_callers(self, use_conn, monkeypatch):
        use_conn(_aksk_conn())
        hook, rec = self._hook(lambda req, n: httpx.Response(200, json={"n": n}))
        builds, reads = [], []
        build = ModelArtsAsyncHook._build_client
        read = ModelArtsAsyncHook._read_config

        def record_build(self, config):
            builds.append(threading.current_thread() is threading.main_thread())
            return build(self, config)

        async def record_read(self):
            reads.append(1)
            return await read(self)

        monkeypatch.setattr(ModelArtsAsyncHook, "_build_client", record_build)
        monkeypatch.setattr(ModelArtsAsyncHook, "_read_config", record_read)

        async def go():
            try:
                results = await asyncio.gather(*(hook.get_training_job("job-1") for _ in range(20)))
                await hook.warm_up()
                return results
            finally:
                await hook.close()

        assert len(_run(go())) == 20
        assert builds == [False]
        assert reads == [1]
        assert len(rec.requests) == 20

    def test_warm_up_reports_a_bad_connection(self, use_conn):
        use_conn({"conn_type": "modelarts", "login": AK, "password": SK, "extra": {}})
        hook, rec = self._hook(lambda req, n: httpx.Response(200, json={}))
        with pytest.raises(ModelArtsConfigError, match="project_id"):
            _run(hook.warm_up())
        assert rec.requests == []

    def test_retries_then_success(self, use_conn):
        use_conn(_aksk_conn())
        hook, rec = self._hook(
            lambda req, n: httpx.Response(503, text="busy") if n < 3 else httpx.Response(200, json={"ok": 1})
        )
        assert _run(hook.get_training_job("job-1")) == {"ok": 1}
        assert len(rec.requests) == 3

    def test_transport_error_retried_then_raised(self, use_conn):
        use_conn(_aksk_conn())

        def handler(req, n):
            raise httpx.ConnectError("refused")

        hook, rec = self._hook(handler)
        with pytest.raises(ModelArtsTransportError):
            _run(hook.get_training_job("job-1"))
        assert len(rec.requests) == 4

    def test_4xx_not_retried(self, use_conn):
        use_conn(_aksk_conn())
        hook, rec = self._hook(
            lambda req, n: httpx.Response(404, json={"error_code": "ModelArts.2775", "error_msg": "nope"})
        )
        with pytest.raises(ModelArtsNotFoundError, match="'job-1'"):
            _run(hook.get_training_job("job-1"))
        assert len(rec.requests) == 1

    def test_token_auth_shared_cache_and_reauth(self, use_conn, requests_mock):
        use_conn(_token_conn())
        requests_mock.post(TOKEN_URL, **_iam_ok("SYNC-FETCHED-TOKEN"))
        requests_mock.get(JOB_URL, json={})
        ModelArtsHook(retry_wait=tenacity.wait_none()).get_training_job("job-1")

        def handler(req, n):
            if req.url.path == "/v3/auth/tokens":
                expires = (datetime.now(timezone.utc) + timedelta(hours=1)).isoformat()
                return httpx.Response(
                    201,
                    headers={"X-Subject-Token": "ASYNC-NEW-TOKEN"},
                    json={"token": {"expires_at": expires}},
                )
            if req.headers["X-Auth-Token"] == "SYNC-FETCHED-TOKEN":
                return httpx.Response(401, json={"error_code": "ModelArts.0202", "error_msg": "expired"})
            return httpx.Response(200, json={"ok": True})

        hook, rec = self._hook(handler)
        with mock.patch.object(async_hook_module, "_amask", new_callable=mock.AsyncMock) as amask:
            assert _run(hook.get_training_job("job-1")) == {"ok": True}
        assert {"ASYNC-NEW-TOKEN", "iam-password-123"} <= {c.args[0] for c in amask.await_args_list}
        assert [r.url.path for r in rec.requests] == [
            f"/v2/{PID}/training-jobs/job-1",
            "/v3/auth/tokens",
            f"/v2/{PID}/training-jobs/job-1",
        ]
        assert TOKEN_CACHE.peek(hook._config.token_key).token == "ASYNC-NEW-TOKEN"

    def test_get_task_log_url(self, use_conn):
        use_conn(_aksk_conn())
        hook, rec = self._hook(lambda req, n: httpx.Response(200, json={"obs_url": LOG_LINK}))
        with (
            mock.patch.object(async_hook_module, "_amask", new_callable=mock.AsyncMock) as amask,
            mock.patch.object(connection_module, "mask_secret", sync_mask := mock.Mock()),
            mock.patch.object(answers_module, "mask_secret", sync_mask),
        ):
            assert _run(hook.get_task_log_url("job-1", "worker-0", download=True)) == LOG_LINK
        assert rec.requests[0].headers["Content-Type"] == "application/octet-stream"
        masked = {c.args[0] for c in amask.await_args_list}
        assert {SIGNATURE, SK} <= masked
        # async code never calls the blocking mask_secret
        assert sync_mask.call_count == 0

    def test_bad_body(self, use_conn):
        use_conn(_aksk_conn())
        hook, _ = self._hook(lambda req, n: httpx.Response(200, text="<html>"))
        with pytest.raises(ModelArtsResponseError):
            _run(hook.get_task_log_url("job-1", "worker-0"))

    def test_validation_before_request(self, use_conn):
        use_conn(_aksk_conn())
        hook, rec = self._hook(lambda req, n: httpx.Response(200, json={}))
        with pytest.raises(ModelArtsValidationError):
            _run(hook.get_training_job("../x"))
        assert rec.requests == []


def test_iam_token_repr_hides_value():
    assert "SECRET" not in repr(IamToken("SECRET-TOKEN", datetime.now(timezone.utc)))
