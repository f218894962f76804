"""The emulator's server-side verifier against the published SDK-HMAC-SHA256 and OBS V2 test vectors."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from airflow_provider_modelarts.emulator.signing import (
    SignatureError,
    canonical_query,
    canonical_request,
    canonical_uri,
    obs_signature,
    obs_string_to_sign,
    parse_raw_query,
    verify_sdk_hmac,
)

AK = "HPUAEXAMPLEAK0000001"
SK = "ExampleSecretKey0000000000000000000000000"
PID = "0123456789abcdef0123456789abcdef"
HOST = "modelarts.cn-north-4.myhuaweicloud.com"
JOB = "2cd88daa-31a4-40a8-a58f-d186b0e93e4f"
DATE = "20240101T000000Z"
NOW = datetime(2024, 1, 1, 0, 5, tzinfo=timezone.utc)


def _lookup(access_key: str) -> tuple[str, str | None] | None:
    return (SK, None) if access_key == AK else None


def _lookup_temporary(access_key: str) -> tuple[str, str | None] | None:
    return (SK, "EXAMPLE-SECURITY-TOKEN") if access_key == AK else None


def _auth(signed: str, signature: str) -> str:
    return f"SDK-HMAC-SHA256 Access={AK}, SignedHeaders={signed}, Signature={signature}"


def _headers(**extra: str) -> dict[str, str]:
    headers = {"content-type": "application/json", "host": HOST, "x-project-id": PID, "x-sdk-date": DATE}
    headers.update(extra)
    return headers


V1 = (
    "GET",
    f"/v2/{PID}/training-jobs/{JOB}",
    _headers(
        authorization=_auth(
            "content-type;host;x-project-id;x-sdk-date",
            "02f7c5978f82e28ceb9bf76beb7590edb0d1b2ac801f6bd8d5f6182e4311b1ad",
        )
    ),
    b"",
)
V2 = (
    "GET",
    f"/v2/{PID}/training-jobs/{JOB}/tasks/worker-0/logs/url",
    _headers(
        **{
            "content-type": "text/plain",
            "x-sdk-content-sha256": "UNSIGNED-PAYLOAD",
            "authorization": _auth(
                "content-type;host;x-project-id;x-sdk-content-sha256;x-sdk-date",
                "dbe4043f45c4d6e0740944d717108087854455e43493542add23c2fbeaecfb07",
            ),
        }
    ),
    b"",
)
V3 = (
    "POST",
    f"/v2/{PID}/training-job-searches?limit=1&name=a%20b%2Fc~%2A",
    _headers(
        authorization=_auth(
            "content-type;host;x-project-id;x-sdk-date",
            "54d5cf5f2d353a187bf7171bda04054a981d24b0584b74d9ff6e54c63af56785",
        )
    ),
    b'{"offset":0,"limit":1}',
)
V4 = (
    "GET",
    f"/v2/{PID}/training-jobs/{JOB}/tasks/worker-0/logs/preview",
    _headers(
        **{
            "x-security-token": "EXAMPLE-SECURITY-TOKEN",
            "authorization": _auth(
                "content-type;host;x-project-id;x-sdk-date;x-security-token",
                "423f2aba6e7e878d115b133823af66a12ad7eaf9ff874c6e36fa48ddb895e4eb",
            ),
        }
    ),
    b"",
)


@pytest.mark.parametrize(("method", "target", "headers", "body"), [V1, V2, V3], ids=["V1", "V2", "V3"])
def test_published_vectors_verify(method, target, headers, body):
    result = verify_sdk_hmac(method, target, headers, body, _lookup, now=NOW)
    assert result.access_key == AK


def test_vector_v4_temporary_credentials():
    method, target, headers, body = V4
    result = verify_sdk_hmac(method, target, headers, body, _lookup_temporary, now=NOW)
    assert result.security_token == "EXAMPLE-SECURITY-TOKEN"
    # Plain credentials verify it as well (the token is just another signed header) ...
    assert verify_sdk_hmac(method, target, headers, body, _lookup, now=NOW).access_key == AK
    # ... but temporary credentials demand the matching token.
    wrong = dict(headers, **{"x-security-token": "OTHER"})
    with pytest.raises(SignatureError, match="security token"):
        verify_sdk_hmac(method, target, wrong, body, _lookup_temporary, now=NOW)


def test_v1_canonical_request_matches_published_text():
    method, target, headers, body = V1
    expected = (
        f"GET\n/v2/{PID}/training-jobs/{JOB}/\n\n"
        f"content-type:application/json\nhost:{HOST}\nx-project-id:{PID}\nx-sdk-date:{DATE}\n\n"
        "content-type;host;x-project-id;x-sdk-date\n"
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    )
    canonical = canonical_request(
        method,
        raw_path=target,
        raw_query="",
        headers=headers,
        signed_headers=["content-type", "host", "x-project-id", "x-sdk-date"],
        body=body,
    )
    assert canonical == expected


def test_v3_canonical_query():
    assert canonical_query(parse_raw_query("limit=1&name=a%20b%2Fc~%2A")) == "limit=1&name=a%20b%2Fc~%2A"
    assert canonical_query(parse_raw_query("b=2&a=1&a=0&e=")) == "a=0&a=1&b=2&e="


def test_canonical_uri_quirks():
    assert canonical_uri("/v2/p/training-jobs/j") == "/v2/p/training-jobs/j/"
    assert canonical_uri("/already/") == "/already/"
    # unquote then split: an encoded slash becomes a separator
    assert canonical_uri("/v2/p/training-jobs/j%201%2Fx/tasks") == "/v2/p/training-jobs/j%201/x/tasks/"


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (
            lambda h: h.update({"authorization": h["authorization"].replace("Signature=02", "Signature=03")}),
            "signature",
        ),
        (lambda h: h.update({"x-project-id": "other"}), "signature"),
        (lambda h: h.update({"host": HOST + ":8443"}), "signature"),
        (lambda h: h.pop("x-project-id"), "missing"),
        (lambda h: h.pop("authorization"), "malformed"),
        (lambda h: h.update({"authorization": "Basic abc"}), "malformed"),
        (lambda h: h.update({"x-sdk-date": "2024-01-01"}), "malformed"),
    ],
)
def test_tampered_requests_are_rejected(mutate, message):
    method, target, headers, body = V1
    headers = dict(headers)
    mutate(headers)
    with pytest.raises(SignatureError, match=message):
        verify_sdk_hmac(method, target, headers, body, _lookup, now=NOW)


def test_unsigned_headers_may_change():
    method, target, headers, body = V1
    headers = dict(headers, accept="*/*", connection="keep-alive", **{"user-agent": "x"})
    assert verify_sdk_hmac(method, target, headers, body, _lookup, now=NOW).access_key == AK


def test_wrong_secret_and_unknown_key_rejected():
    method, target, headers, body = V1
    with pytest.raises(SignatureError, match="verify aksk signature fail"):
        verify_sdk_hmac(method, target, headers, body, lambda ak: ("wrong", None), now=NOW)
    with pytest.raises(SignatureError, match="access key not found"):
        verify_sdk_hmac(method, target, headers, body, lambda ak: None, now=NOW)


def test_body_tampering_rejected():
    method, target, headers, _ = V3
    with pytest.raises(SignatureError):
        verify_sdk_hmac(method, target, headers, b'{"offset":1,"limit":1}', _lookup, now=NOW)


@pytest.mark.parametrize(("minutes", "ok"), [(-14, True), (14, True), (-16, False), (16, False)])
def test_clock_skew_window(minutes, ok):
    method, target, headers, body = V1
    now = datetime(2024, 1, 1, tzinfo=timezone.utc).timestamp() + minutes * 60
    when = datetime.fromtimestamp(now, tz=timezone.utc)
    if ok:
        verify_sdk_hmac(method, target, headers, body, _lookup, now=when)
    else:
        with pytest.raises(SignatureError, match="15 minutes"):
            verify_sdk_hmac(method, target, headers, body, _lookup, now=when)


def test_legacy_credential_form_accepted():
    method, target, headers, body = V1
    legacy = headers["authorization"].replace(
        f"Access={AK}", f"Credential={AK}/20240101//modelarts/sdk_request"
    )
    assert verify_sdk_hmac(method, target, dict(headers, authorization=legacy), body, _lookup, now=NOW)


def test_obs_v2_vector():
    to_sign = obs_string_to_sign("GET", 1704067500, "/mybucket/logs/modelarts-job-abc-worker-0.log")
    assert to_sign == "GET\n\n\n1704067500\n/mybucket/logs/modelarts-job-abc-worker-0.log"
    assert obs_signature(SK, to_sign) == "6NhWHnjOhCvDvcMuSCCPs3xoX4g="
