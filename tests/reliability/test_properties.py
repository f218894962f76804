"""Property-based tests (hypothesis) of the AK/SK signer's canonicalisation and of id validation.

The reference for the signer is the official ``huaweicloudsdkcore`` ``Signer``: for any request the
provider's signer must produce the same ``Authorization`` header and send the same canonical query.
"""

from __future__ import annotations

from urllib.parse import quote, unquote, urlsplit

import pytest
from huaweicloudsdkcore.auth.credentials import BasicCredentials
from huaweicloudsdkcore.sdk_request import SdkRequest
from huaweicloudsdkcore.signer.signer import Signer
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from airflow_provider_modelarts import auth

AK = "HPUAEXAMPLEAK0000001"
SK = "ExampleSecretKey0000000000000000000000000"
HOST = "modelarts.cn-north-4.myhuaweicloud.com"
DATE = "20240101T000000Z"

PROFILE = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

segments = st.lists(st.text(min_size=1, max_size=12), min_size=1, max_size=5)
query_text = st.text(max_size=10)
query_pairs = st.lists(st.tuples(st.text(min_size=1, max_size=8), query_text), max_size=5)
ascii_value = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=0, max_size=20
).map(str.strip)
content_types = st.sampled_from(
    [None, "application/json", "application/json;charset=utf-8", "text/plain", "application/octet-stream"]
)


def _sdk_sign(
    method: str, path: str, pairs: list[tuple[str, str]], headers: dict[str, str], body: bytes
) -> SdkRequest:
    request = SdkRequest(
        method=method,
        schema="https",
        host=HOST,
        resource_path=path,
        query_params=list(pairs),
        header_params=dict(headers),
        body=body,
    )
    return Signer(BasicCredentials(AK, SK)).sign(request)


@PROFILE
@given(
    method=st.sampled_from(["GET", "POST", "PUT", "DELETE"]),
    segs=segments,
    pairs=query_pairs,
    content_type=content_types,
    user_agent=ascii_value,
    body=st.binary(max_size=64),
    security_token=st.none() | st.text(alphabet="ABCDEFabcdef0123456789-_", min_size=1, max_size=20),
)
@example(
    method="GET",
    segs=["v2", "p", "training-jobs", "j 1/x"],
    pairs=[("name", "a b/c~*"), ("limit", "1")],
    content_type="text/plain",
    user_agent="ua",
    body=b"",
    security_token=None,
)
def test_signer_matches_official_sdk(  # noqa: PLR0917
    method, segs, pairs, content_type, user_agent, body, security_token
):
    """Same Authorization and same sent query as ``huaweicloudsdkcore`` for any path, query, body and headers."""
    path = "/" + "/".join(quote(s, safe="") for s in segs)
    headers = {"User-Agent": user_agent, "X-Sdk-Date": DATE}
    if content_type:
        headers["Content-Type"] = content_type
    if security_token:
        headers["X-Security-Token"] = security_token

    ours = auth.AkSkSigner(AK, SK).sign(
        method, f"https://{HOST}{path}", params=pairs, headers=headers, body=body
    )
    sdk = _sdk_sign(method, path, pairs, headers, body)

    assert ours.headers["Authorization"] == sdk.header_params["Authorization"]
    sdk_query = sdk.uri.partition("?")[2]
    assert urlsplit(ours.url).query == sdk_query
    assert urlsplit(ours.url).path == path


def test_non_ascii_header_value_matches_official_sdk():
    """The SDK signs the *text* of a header value and only re-encodes it for the wire afterwards."""
    headers = {"User-Agent": "airflow/ünïcødé", "Content-Type": "application/json", "X-Sdk-Date": DATE}
    path = "/v2/p/training-jobs/j"
    ours = auth.AkSkSigner(AK, SK).sign("GET", f"https://{HOST}{path}", headers=headers)
    sdk = _sdk_sign("GET", path, [], headers, b"")
    assert ours.headers["Authorization"] == sdk.header_params["Authorization"]


# ------------------------------------------------------------------------------------------------
# Id validation
# ------------------------------------------------------------------------------------------------

FORBIDDEN_IN_IDS = ["/", "\\", "?", "#", "..", " ", "\t", "\n", "\r", "\x00", "\x7f", "\u2028", "\u3000"]


@PROFILE
@given(value=st.text(max_size=300) | st.integers() | st.none() | st.binary(max_size=10))
def test_resource_id_validation_accepts_exactly_the_documented_set(value):
    """Accepted iff a 1-256 char printable string without ``/ \\ ? #``, whitespace or ``..``; never another error."""
    from airflow_provider_modelarts.connection import validate_resource_id
    from airflow_provider_modelarts.exceptions import ModelArtsValidationError

    documented_ok = (
        isinstance(value, str)
        and 1 <= len(value) <= 256
        and value != "."
        and ".." not in value
        and not any(c in "/\\?#" or c.isspace() or not c.isprintable() for c in value)
    )
    try:
        assert validate_resource_id(value, "task_id") == value
        accepted = True
    except ModelArtsValidationError as e:
        assert "task_id" in str(e)
        accepted = False
    assert accepted == documented_ok, value


@PROFILE
@given(prefix=st.text(max_size=20), bad=st.sampled_from(FORBIDDEN_IN_IDS), suffix=st.text(max_size=20))
def test_any_id_with_a_forbidden_part_is_rejected(prefix, bad, suffix):
    from airflow_provider_modelarts.connection import validate_resource_id
    from airflow_provider_modelarts.exceptions import ModelArtsValidationError

    with pytest.raises(ModelArtsValidationError):
        validate_resource_id(prefix + bad + suffix)


@PROFILE
@given(value=st.text(max_size=80))
def test_project_id_validation(value):
    import re

    from airflow_provider_modelarts.connection import validate_project_id
    from airflow_provider_modelarts.exceptions import ModelArtsValidationError

    ok = re.fullmatch(r"[A-Za-z0-9-]{1,64}", value) is not None
    try:
        validate_project_id(value)
        accepted = True
    except ModelArtsValidationError:
        accepted = False
    assert accepted == ok


valid_ids = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc", "Zs", "Zl", "Zp"), blacklist_characters="/\\?#"),
    min_size=1,
    max_size=40,
).filter(lambda v: ".." not in v and v != "." and v.isprintable())


@pytest.mark.timeout(120)
def test_accepted_ids_stay_one_path_segment_on_the_wire(monkeypatch):
    """Whatever id passes validation, the request the server sees is ``/v2/{pid}/training-jobs/<one segment>``
    that decodes back to the id: no traversal, no query or fragment smuggling."""
    import json

    import tenacity

    from airflow_provider_modelarts.hooks.modelarts import ModelArtsHook
    from tests.reliability._servers import Answer, ScriptedServer

    pid = "0123456789abcdef0123456789abcdef"
    body = json.dumps({"metadata": {"id": "x"}, "status": {"phase": "Running", "tasks": []}})
    with ScriptedServer(lambda method, path: Answer(body=body)) as server:
        monkeypatch.setenv(
            "AIRFLOW_CONN_MODELARTS_DEFAULT",
            json.dumps(
                {
                    "conn_type": "modelarts",
                    "login": AK,
                    "password": SK,
                    "extra": {"project_id": pid, "endpoint": server.url},
                }
            ),
        )
        hook = ModelArtsHook(retry_wait=tenacity.wait_none(), max_retries=0, request_timeout=5)

        @settings(max_examples=100, deadline=None)
        @given(job_id=valid_ids)
        def check(job_id):
            server.requests.clear()
            hook.get_training_job(job_id)
            [(_, raw_path, _)] = server.requests
            prefix = f"/v2/{pid}/training-jobs/"
            assert raw_path.startswith(prefix), raw_path
            segment = raw_path[len(prefix) :]
            assert "/" not in segment and "?" not in segment and "#" not in segment, raw_path
            assert unquote(segment) == job_id

        check()
