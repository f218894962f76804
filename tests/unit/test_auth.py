from __future__ import annotations

import hashlib
import json
import threading
import time
from datetime import datetime, timedelta, timezone
from urllib.parse import quote, unquote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from airflow_provider_modelarts import auth
from airflow_provider_modelarts.auth import (
    EMPTY_SHA256,
    AkSkSigner,
    IamToken,
    TokenCache,
    TokenResponseError,
    build_token_request,
    canonical_query,
    canonical_request,
    canonical_uri,
    parse_token_response,
    string_to_sign,
)

AK = "HPUAEXAMPLEAK0000001"
SK = "ExampleSecretKey0000000000000000000000000"
PID = "0123456789abcdef0123456789abcdef"
HOST = "https://modelarts.cn-north-4.myhuaweicloud.com"
DATE = "20240101T000000Z"
JOB = f"/v2/{PID}/training-jobs/2cd88daa-31a4-40a8-a58f-d186b0e93e4f"


@pytest.fixture
def signer() -> AkSkSigner:
    return AkSkSigner(AK, SK, project_id=PID)


class TestPublishedVectors:
    def test_v1_get_job_details(self, signer):
        signed = signer.sign("GET", HOST + JOB, headers={"Content-Type": "application/json"}, sdk_date=DATE)
        assert signed.headers["Authorization"] == (
            "SDK-HMAC-SHA256 Access=HPUAEXAMPLEAK0000001, "
            "SignedHeaders=content-type;host;x-project-id;x-sdk-date, "
            "Signature=02f7c5978f82e28ceb9bf76beb7590edb0d1b2ac801f6bd8d5f6182e4311b1ad"
        )
        assert signed.url == HOST + JOB
        assert signed.headers["Host"] == "modelarts.cn-north-4.myhuaweicloud.com"
        assert signed.headers["X-Project-Id"] == PID
        assert signed.headers["X-Sdk-Date"] == DATE

    def test_v1_canonical_request_and_string_to_sign(self):
        headers = {
            "Content-Type": "application/json",
            "X-Project-Id": PID,
            "X-Sdk-Date": DATE,
            "Host": "modelarts.cn-north-4.myhuaweicloud.com",
        }
        canonical = canonical_request("GET", JOB, None, headers, b"")
        assert canonical == (
            "GET\n"
            f"{JOB}/\n"
            "\n"
            "content-type:application/json\n"
            "host:modelarts.cn-north-4.myhuaweicloud.com\n"
            f"x-project-id:{PID}\n"
            "x-sdk-date:20240101T000000Z\n"
            "\n"
            "content-type;host;x-project-id;x-sdk-date\n"
            f"{EMPTY_SHA256}"
        )
        assert string_to_sign(canonical, DATE) == (
            "SDK-HMAC-SHA256\n20240101T000000Z\nce78a7fe62e8ff71586bdef806102fb4ac042c52caa9a384273a40e87e71c402"
        )

    def test_v2_text_plain_adds_unsigned_payload(self, signer):
        signed = signer.sign(
            "GET",
            HOST + JOB + "/tasks/worker-0/logs/url",
            headers={"Content-Type": "text/plain"},
            sdk_date=DATE,
        )
        assert signed.headers["X-Sdk-Content-Sha256"] == "UNSIGNED-PAYLOAD"
        assert signed.headers["Authorization"] == (
            "SDK-HMAC-SHA256 Access=HPUAEXAMPLEAK0000001, "
            "SignedHeaders=content-type;host;x-project-id;x-sdk-content-sha256;x-sdk-date, "
            "Signature=dbe4043f45c4d6e0740944d717108087854455e43493542add23c2fbeaecfb07"
        )
        canonical = canonical_request(
            "GET",
            JOB + "/tasks/worker-0/logs/url",
            None,
            {k: v for k, v in signed.headers.items() if k != "Authorization"},
            b"",
        )
        assert hashlib.sha256(canonical.encode()).hexdigest() == (
            "f8ea1dc3a9dc65f145bdcc0867c149fd576cfddbec5269e0cbf909294d51c688"
        )

    def test_v3_post_with_query_and_body(self, signer):
        signed = signer.sign(
            "POST",
            f"{HOST}/v2/{PID}/training-job-searches",
            params=[("limit", 1), ("name", "a b/c~*")],
            headers={"Content-Type": "application/json"},
            body=b'{"offset":0,"limit":1}',
            sdk_date=DATE,
        )
        assert signed.headers["Authorization"].endswith(
            "Signature=54d5cf5f2d353a187bf7171bda04054a981d24b0584b74d9ff6e54c63af56785"
        )
        assert signed.url == f"{HOST}/v2/{PID}/training-job-searches?limit=1&name=a%20b%2Fc~%2A"
        assert signed.body == b'{"offset":0,"limit":1}'
        assert hashlib.sha256(b'{"offset":0,"limit":1}').hexdigest() == (
            "8f23bc9181317d0c6f42a2c50e410ba792ca2d92b5572333d952e787dd8d9752"
        )

    def test_v4_temporary_credentials(self):
        signer = AkSkSigner(AK, SK, project_id=PID, security_token="EXAMPLE-SECURITY-TOKEN")
        signed = signer.sign(
            "GET",
            HOST + JOB + "/tasks/worker-0/logs/preview",
            headers={"Content-Type": "application/json"},
            sdk_date=DATE,
        )
        assert signed.headers["X-Security-Token"] == "EXAMPLE-SECURITY-TOKEN"
        assert signed.headers["Authorization"] == (
            "SDK-HMAC-SHA256 Access=HPUAEXAMPLEAK0000001, "
            "SignedHeaders=content-type;host;x-project-id;x-sdk-date;x-security-token, "
            "Signature=423f2aba6e7e878d115b133823af66a12ad7eaf9ff874c6e36fa48ddb895e4eb"
        )


def _sdk_signature(method, host, path, query, headers):
    """The official huaweicloudsdkcore signer on the same request."""
    from huaweicloudsdkcore.auth.credentials import BasicCredentials
    from huaweicloudsdkcore.sdk_request import SdkRequest
    from huaweicloudsdkcore.signer.signer import Signer

    request = SdkRequest(
        method=method,
        schema="http",
        host=host,
        resource_path=path,
        query_params=list(query),
        header_params=dict(headers),
        body=None,
    )
    Signer(BasicCredentials(AK, SK, PID)).sign(request)
    return request.header_params["Authorization"]


class TestCanonicalisation:
    def test_trailing_slash_always_added_once(self):
        assert canonical_uri("/a/b") == "/a/b/"
        assert canonical_uri("/a/b/") == "/a/b/"
        assert canonical_uri("/") == "/"

    def test_unquote_then_split(self):
        # An encoded slash becomes a real separator; an encoded space stays encoded.
        assert canonical_uri("/v2/p/training-jobs/j%201%2Fx") == "/v2/p/training-jobs/j%201/x/"

    def test_segments_requoted_like_sdk(self):
        assert canonical_uri("/x/a*b~c(d)") == "/x/a%2Ab~c%28d%29/"

    def test_query_sorted_and_encoded(self):
        assert canonical_query([("b", "2"), ("a", "x y"), ("a", "1")]) == "a=1&a=x%20y&b=2"

    def test_query_list_bool_and_empty_values(self):
        assert canonical_query({"k": ["b", "a"], "flag": True, "off": False, "e": ""}) == (
            "e=&flag=true&k=a&k=b&off=false"
        )

    def test_query_from_url_merged_with_params(self, signer):
        signed = signer.sign("GET", "http://h:1/p?z=1&a=2", params={"m": "3"}, sdk_date=DATE)
        assert signed.url == "http://h:1/p?a=2&m=3&z=1"

    def test_headers_with_underscore_not_signed(self, signer):
        signed = signer.sign(
            "GET", "http://h/p", headers={"X_Custom": "v", "User-Agent": "ua"}, sdk_date=DATE
        )
        assert "SignedHeaders=host;user-agent;x-project-id;x-sdk-date," in signed.headers["Authorization"]

    def test_host_keeps_port(self, signer):
        signed = signer.sign("GET", "http://127.0.0.1:18080/v2/x", sdk_date=DATE)
        assert signed.headers["Host"] == "127.0.0.1:18080"

    def test_empty_body_beats_unsigned_payload_header(self):
        headers = {"X-Sdk-Content-Sha256": "UNSIGNED-PAYLOAD"}
        assert auth.payload_hash(b"", headers) == EMPTY_SHA256
        assert auth.payload_hash(None, headers) == EMPTY_SHA256
        assert auth.payload_hash(b"x", headers) == "UNSIGNED-PAYLOAD"
        assert auth.payload_hash(b"x", {}) == hashlib.sha256(b"x").hexdigest()

    @pytest.mark.parametrize(
        ("content_type", "unsigned"),
        [
            ("application/json", False),
            ("application/json;charset=utf-8", False),
            ("application/bson", False),
            ("text/plain", True),
            ("application/octet-stream", True),
        ],
    )
    def test_unsigned_payload_for_non_json(self, signer, content_type, unsigned):
        signed = signer.sign("GET", "http://h/p", headers={"Content-Type": content_type}, sdk_date=DATE)
        assert ("X-Sdk-Content-Sha256" in signed.headers) is unsigned

    def test_existing_date_reused_and_default_date_is_now(self, signer):
        signed = signer.sign("GET", "http://h/p", headers={"X-Sdk-Date": DATE})
        assert signed.headers["X-Sdk-Date"] == DATE
        now = signer.sign("GET", "http://h/p").headers["X-Sdk-Date"]
        parsed = datetime.strptime(now, "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc)
        assert abs((parsed - datetime.now(timezone.utc)).total_seconds()) < 5

    def test_header_values_stripped_and_non_ascii_as_latin1(self, signer):
        signed = signer.sign("GET", "http://h/p", headers={"User-Agent": "  caf\u00e9 "}, sdk_date=DATE)
        assert signed.headers["User-Agent"] == "caf\u00e9".encode().decode("latin-1")

    def test_matches_official_sdk_on_user_agent_and_odd_path(self):
        headers = {"Content-Type": "application/json", "User-Agent": "airflow-provider-modelarts/x"}
        ours = AkSkSigner(AK, SK, project_id=PID).sign(
            "GET",
            "http://127.0.0.1:18080/v2/p/training-jobs/j%201%2Fx",
            params=[("b", "x y"), ("a", "1")],
            headers={**headers, "X-Sdk-Date": DATE},
            sdk_date=DATE,
        )
        theirs = _sdk_signature(
            "GET",
            "127.0.0.1:18080",
            "/v2/p/training-jobs/j%201%2Fx",
            [("b", "x y"), ("a", "1")],
            {**headers, "X-Project-Id": PID, "X-Sdk-Date": DATE},
        )
        assert ours.headers["Authorization"] == theirs

    def test_non_ascii_header_signed_as_text_like_official_sdk(self):
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "airflow/\u00fcn\u00efc\u00f8d\u00e9",
            "X-Sdk-Date": DATE,
        }
        ours = AkSkSigner(AK, SK, project_id=PID).sign("GET", "http://h:1/v2/p", headers=headers)
        theirs = _sdk_signature("GET", "h:1", "/v2/p", [], {**headers, "X-Project-Id": PID})
        assert ours.headers["Authorization"] == theirs

    def test_signer_requires_keys_and_hides_sk(self):
        with pytest.raises(ValueError, match="access_key"):
            AkSkSigner("", SK)
        with pytest.raises(ValueError, match="secret_key"):
            AkSkSigner(AK, "")
        assert SK not in repr(AkSkSigner(AK, SK))


_segment_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="/%"), min_size=0, max_size=20
)


class TestCanonicalisationProperties:
    @given(st.lists(_segment_text.filter(bool), min_size=1, max_size=6))
    def test_canonical_uri_round_trips_segments(self, segments):
        sent = "/" + "/".join(quote(s, safe="") for s in segments)
        uri = canonical_uri(sent)
        assert uri == "/" + "/".join(quote(s, safe="~") for s in segments) + "/"
        assert [unquote(s) for s in uri[1:-1].split("/")] == segments
        assert canonical_uri(uri) == uri
        assert all((c.isalnum() and c.isascii()) or c in "-_.~%/" for c in uri)

    @given(st.lists(st.tuples(_segment_text, _segment_text), max_size=8))
    def test_canonical_query_is_order_independent_and_idempotent(self, pairs):
        query = canonical_query(pairs)
        assert query == canonical_query(list(reversed(pairs)))
        reparsed = (
            [tuple(unquote(part) for part in item.split("=", 1)) for item in query.split("&")]
            if query
            else []
        )
        assert canonical_query(reparsed) == query

    @settings(max_examples=50)
    @given(
        st.lists(
            st.tuples(st.from_regex(r"[A-Za-z0-9 _.~*-]{1,8}", fullmatch=True), _segment_text), max_size=4
        ),
        st.from_regex(r"[A-Za-z0-9._~ -]{1,12}", fullmatch=True),
    )
    def test_signature_matches_official_sdk(self, pairs, segment):
        path = "/v2/p/training-jobs/" + quote(segment, safe="")
        headers = {"Content-Type": "application/json", "X-Sdk-Date": DATE}
        ours = AkSkSigner(AK, SK, project_id=PID).sign(
            "GET", "http://h:1" + path, params=pairs, headers=headers
        )
        theirs = _sdk_signature("GET", "h:1", path, sorted(pairs), {**headers, "X-Project-Id": PID})
        assert ours.headers["Authorization"] == theirs


class TestTokenRequest:
    def test_password_method_project_scope_by_id(self):
        request = build_token_request(
            "https://iam.example.com:8443", domain_name="acct", user_name="bob", password="pw", project_id=PID
        )
        assert request.url == "https://iam.example.com:8443/v3/auth/tokens?nocatalog=true"
        assert request.headers["Content-Type"].startswith("application/json")
        body = json.loads(request.body)
        assert body["auth"]["identity"]["methods"] == ["password"]
        assert body["auth"]["identity"]["password"]["user"] == {
            "name": "bob",
            "password": "pw",
            "domain": {"name": "acct"},
        }
        assert body["auth"]["scope"] == {"project": {"id": PID}}

    def test_parse_response(self):
        token = parse_token_response(
            {"x-subject-token": "TOKEN-VALUE"},
            json.dumps({"token": {"expires_at": "2019-02-13T06:52:13.855000Z"}}),
        )
        assert token.token == "TOKEN-VALUE"
        assert token.expires_at == datetime(2019, 2, 13, 6, 52, 13, 855000, tzinfo=timezone.utc)
        assert "TOKEN-VALUE" not in repr(token)

    @pytest.mark.parametrize(
        ("headers", "body"),
        [
            ({}, '{"token": {"expires_at": "2019-02-13T06:52:13Z"}}'),
            ({"X-Subject-Token": "t"}, "not json"),
            ({"X-Subject-Token": "t"}, '{"token": {}}'),
            ({"X-Subject-Token": "t"}, '{"token": {"expires_at": "tomorrow"}}'),
            ({"X-Subject-Token": "t"}, "[]"),
        ],
    )
    def test_bad_responses(self, headers, body):
        with pytest.raises(TokenResponseError):
            parse_token_response(headers, body)


def _token(value: str, minutes: float) -> IamToken:
    return IamToken(value, datetime.now(timezone.utc) + timedelta(minutes=minutes))


class TestTokenCache:
    KEY = ("https://iam", "d", "u", "p")

    def test_fetches_once_then_reuses(self):
        cache = TokenCache()
        calls = []
        for _ in range(5):
            cache.get(self.KEY, lambda: calls.append(1) or _token("t1", 60))
        assert len(calls) == 1

    def test_refreshes_within_lead_time(self):
        cache = TokenCache(lead=timedelta(minutes=10))
        cache.store(self.KEY, _token("old", 9))
        assert cache.get(self.KEY, lambda: _token("new", 60)).token == "new"

    def test_invalidate_only_matching_token(self):
        cache = TokenCache()
        cache.store(self.KEY, _token("current", 60))
        cache.invalidate(self.KEY, "stale")
        assert cache.peek(self.KEY).token == "current"
        cache.invalidate(self.KEY, "current")
        assert cache.peek(self.KEY) is None

    def test_concurrent_callers_fetch_once(self):
        cache = TokenCache()
        calls = []

        def fetch():
            calls.append(1)
            time.sleep(0.05)
            return _token("t", 60)

        threads = [threading.Thread(target=cache.get, args=(self.KEY, fetch)) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(calls) == 1

    def test_keys_are_separate(self):
        cache = TokenCache()
        cache.store(self.KEY, _token("a", 60))
        assert cache.peek(("https://iam", "d", "u", "other")) is None
