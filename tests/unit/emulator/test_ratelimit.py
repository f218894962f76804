"""The emulator's gateway rate limit: token bucket per credential, 429 APIG.0308, no Retry-After."""

from __future__ import annotations

import pytest
import requests

from airflow_provider_modelarts.auth import AkSkSigner
from airflow_provider_modelarts.emulator import DEFAULT_DOMAIN, DEFAULT_IAM_PASSWORD, DEFAULT_IAM_USER
from airflow_provider_modelarts.emulator.__main__ import build_parser
from airflow_provider_modelarts.emulator.ratelimit import (
    RateLimit,
    RateLimiter,
    credential_of,
    parse_rate_limit,
)

MESSAGE = "The throttling threshold has been reached: policy user over ratelimit,limit:{},time:1 {}"


@pytest.mark.parametrize(
    ("spec", "limit", "period"),
    [("20", 20, 1), ("20/s", 20, 1), ("2.5/second", 2.5, 1), ("600/min", 600, 60), (" 7 / MIN ", 7, 60)],
)
def test_parse(spec, limit, period):
    assert parse_rate_limit(spec) == RateLimit(limit=limit, period=period)


@pytest.mark.parametrize("spec", ["", "0", "-1/s", "10/h", "fast", "10/s/s", "1e3"])
def test_parse_refuses(spec):
    with pytest.raises(ValueError, match="rate limit"):
        parse_rate_limit(spec)


def test_cli_option():
    assert build_parser().parse_args(["--rate-limit", "20/s"]).rate_limit == "20/s"
    assert build_parser().parse_args([]).rate_limit is None
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--rate-limit", "lots"])


def test_message_has_the_gateway_shape():
    assert parse_rate_limit("20/s").message() == MESSAGE.format(20, "second")
    assert parse_rate_limit("600/min").message() == MESSAGE.format(600, "minute")


def test_token_bucket_per_credential_with_a_fake_clock():
    now = [0.0]
    limiter = RateLimiter(parse_rate_limit("4/s"), clock=lambda: now[0])
    assert [limiter.allow("ak:A") for _ in range(5)] == [True] * 4 + [False]
    assert limiter.allow("ak:B")  # another credential has its own bucket
    now[0] = 0.25  # one token back
    assert [limiter.allow("ak:A") for _ in range(2)] == [True, False]
    now[0] = 100.0  # never more than the bucket holds
    assert [limiter.allow("ak:A") for _ in range(5)] == [True] * 4 + [False]
    assert limiter.rejected() == 3
    assert limiter.allowed_times("ak:B") == [0.0]


def test_per_minute_refills_slowly():
    now = [0.0]
    limiter = RateLimiter(parse_rate_limit("2/min"), clock=lambda: now[0])
    assert [limiter.allow("u") for _ in range(3)] == [True, True, False]
    now[0] = 29.0
    assert not limiter.allow("u")
    now[0] = 31.0
    assert limiter.allow("u")


def test_credential_of():
    assert credential_of({"x-auth-token": "t"}, token_user="bob") == "user:bob"
    auth = "SDK-HMAC-SHA256 Access=AKX, SignedHeaders=host;x-sdk-date, Signature=abc"
    assert credential_of({"authorization": auth}, token_user="bob") == "ak:AKX"
    assert credential_of({}, token_user="bob") == "anonymous"


# ------------------------------------------------------------------ over HTTP


def _token(emu) -> str:
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
            "scope": {"project": {"name": "cn-north-4"}},
        }
    }
    return requests.post(f"{emu.url}/v3/auth/tokens", json=body, timeout=10).headers["X-Subject-Token"]


def _signed_get(emu, ak: str, sk: str, security_token: str | None = None) -> requests.Response:
    url = f"{emu.url}/v2/{emu.project_id}/training-jobs/job-ok"
    signed = AkSkSigner(ak, sk, project_id=emu.project_id, security_token=security_token).sign(
        "GET", url, params=[], headers={"Content-Type": "application/json"}, body=None
    )
    return requests.get(signed.url, headers=signed.headers, timeout=10)


@pytest.mark.integration
def test_over_http_each_credential_has_its_bucket(emulator_factory):
    emu = emulator_factory(
        rate_limit="3/min", temporary_credentials=("TMPAK0001", "TMPSK" + "0" * 30, "STOK" * 8)
    )
    answers = [_signed_get(emu, emu.ak, emu.sk) for _ in range(4)]
    assert [a.status_code for a in answers] == [200, 200, 200, 429]
    refused = answers[-1]
    doc = refused.json()
    assert doc["error_code"] == "APIG.0308"
    assert doc["error_msg"] == MESSAGE.format(3, "minute")
    assert doc["request_id"] and refused.headers.get("X-Request-Id")
    assert "Retry-After" not in refused.headers
    # Another AK and the IAM user have their own buckets; IAM token requests and OBS are not limited.
    assert _signed_get(emu, "TMPAK0001", "TMPSK" + "0" * 30, "STOK" * 8).status_code == 200
    token = _token(emu)
    url = f"{emu.url}/v2/{emu.project_id}/training-jobs/job-ok"
    statuses = [requests.get(url, headers={"X-Auth-Token": token}, timeout=10).status_code for _ in range(4)]
    assert statuses == [200, 200, 200, 429]
    assert _token(emu)
    assert emu.counters["throttled"] == 2
    assert emu.rate_limiter is not None and emu.rate_limiter.rejected() == 2


@pytest.mark.integration
def test_over_http_no_limit_by_default(emulator):
    assert emulator.rate_limiter is None
    assert all(_signed_get(emulator, emulator.ak, emulator.sk).status_code == 200 for _ in range(30))
