"""Raw HTTP behaviour of the emulator: IAM tokens, API routes, OBS links, Range, expiry and fault knobs."""

from __future__ import annotations

import hashlib
import http.client
import json
import time
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from airflow_provider_modelarts.emulator import DEFAULT_DOMAIN, DEFAULT_IAM_PASSWORD, DEFAULT_IAM_USER

pytestmark = pytest.mark.integration


def _token_body(user=DEFAULT_IAM_USER, password=DEFAULT_IAM_PASSWORD, domain=DEFAULT_DOMAIN, scope=None):
    return {
        "auth": {
            "identity": {
                "methods": ["password"],
                "password": {"user": {"name": user, "password": password, "domain": {"name": domain}}},
            },
            "scope": scope if scope is not None else {"project": {"name": "cn-north-4"}},
        }
    }


def _token(emu) -> str:
    resp = requests.post(f"{emu.url}/v3/auth/tokens?nocatalog=true", json=_token_body(), timeout=10)
    assert resp.status_code == 201
    return resp.headers["X-Subject-Token"]


class Api:
    def __init__(self, emu):
        self.emu = emu
        self.token = _token(emu)
        self.session = requests.Session()

    def __call__(self, method, path, *, token=None, **kwargs):
        headers = kwargs.pop("headers", {})
        headers.setdefault("X-Auth-Token", token or self.token)
        url = f"{self.emu.url}/v2/{self.emu.project_id}{path}"
        return self.session.request(method, url, headers=headers, timeout=10, **kwargs)

    def link(self, job, task, content_type="text/plain"):
        resp = self(
            "GET", f"/training-jobs/{job}/tasks/{task}/logs/url", headers={"Content-Type": content_type}
        )
        assert resp.status_code == 200, resp.text
        return resp.json()["obs_url"]


@pytest.fixture
def api(emulator):
    return Api(emulator)


# ------------------------------------------------------------------ IAM and auth


def test_iam_token_issue(emulator):
    resp = requests.post(f"{emulator.url}/v3/auth/tokens", json=_token_body(), timeout=10)
    assert resp.status_code == 201
    token = resp.json()["token"]
    assert resp.headers["X-Subject-Token"].startswith("MII")
    assert token["project"]["id"] == emulator.project_id
    assert token["expires_at"].endswith("Z") and token["issued_at"].endswith("Z")
    assert "catalog" in token
    assert (
        "catalog"
        not in requests.post(
            f"{emulator.url}/v3/auth/tokens?nocatalog=true", json=_token_body(), timeout=10
        ).json()["token"]
    )
    assert emulator.counters["iam_token"] == 2


@pytest.mark.parametrize(
    "body",
    [
        _token_body(password="wrong"),
        _token_body(user="someone"),
        _token_body(domain="other"),
        _token_body(scope={"project": {"id": "not-my-project"}}),
    ],
)
def test_iam_token_rejected(emulator, body):
    resp = requests.post(f"{emulator.url}/v3/auth/tokens", json=body, timeout=10)
    assert resp.status_code == 401
    assert resp.json()["error_code"].startswith("IAM.")
    assert "X-Subject-Token" not in resp.headers


def test_domain_scoped_token_cannot_call_project_api(emulator, api):
    resp = requests.post(
        f"{emulator.url}/v3/auth/tokens",
        json=_token_body(scope={"domain": {"name": DEFAULT_DOMAIN}}),
        timeout=10,
    )
    assert resp.status_code == 201
    denied = api("GET", "/training-jobs/job-ok", token=resp.headers["X-Subject-Token"])
    assert denied.status_code == 401
    assert denied.json()["error_code"] == "ModelArts.0207"


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({}, "x-auth-token not found"),
        ({"X-Auth-Token": "MIIbogus"}, "decrypt token fail"),
        ({"Authorization": "SDK-HMAC-SHA256 Access=x, SignedHeaders=host, Signature=00"}, "x-sdk-date"),
    ],
)
def test_unauthenticated_requests_rejected(emulator, headers, message):
    resp = requests.get(
        f"{emulator.url}/v2/{emulator.project_id}/training-jobs/job-ok", headers=headers, timeout=10
    )
    assert resp.status_code == 401
    body = resp.json()
    assert body["error_code"] == "APIG.0301"
    assert message in body["error_msg"]
    assert body["request_id"] == resp.headers["X-Request-Id"]
    assert emulator.counters["rejected_auth"] == 1
    assert emulator.counters["job"] == 1


def test_unknown_path_and_job(emulator, api):
    resp = api("GET", "/no-such-api")
    assert resp.status_code == 404
    assert resp.json()["error_code"] == "APIG.0101"
    assert resp.headers["X-Request-Id"]
    missing = api("GET", "/training-jobs/nope")
    assert missing.status_code == 404
    assert missing.json() == {
        "error_code": "ModelArts.2775",
        "error_msg": "Training job (ID: nope) not found.",
    }


def test_outside_project_counted_and_refused(emulator, api):
    resp = api.session.get(
        f"{emulator.url}/v2/another-project/training-jobs/job-ok",
        headers={"X-Auth-Token": api.token},
        timeout=10,
    )
    assert resp.status_code == 403
    assert resp.json()["error_code"] == "ModelArts.0210"
    assert emulator.counters["outside_project"] == 1


def test_keep_alive_and_content_length(emulator):
    conn = http.client.HTTPConnection("127.0.0.1", emulator.port, timeout=10)
    token = _token(emulator)
    for _ in range(3):
        conn.request(
            "GET", f"/v2/{emulator.project_id}/training-jobs/job-ok", headers={"X-Auth-Token": token}
        )
        resp = conn.getresponse()
        data = resp.read()
        assert resp.status == 200
        assert int(resp.getheader("Content-Length")) == len(data)
        assert not resp.will_close
    conn.close()


# ------------------------------------------------------------------ job bodies, search, tasks, actions


def test_job_details_shape(api):
    body = api("GET", "/training-jobs/job-failed").json()
    assert body["kind"] == "job"
    assert body["metadata"]["id"] == "job-failed"
    assert isinstance(body["metadata"]["create_time"], int)
    status = body["status"]
    assert status["phase"] == "Failed"
    assert status["tasks"] == ["worker-0"]
    assert status["task_statuses"] == [
        {"task": "worker-0", "exit_code": 1, "message": "process exited with code 1"}
    ]
    assert body["spec"]["resource"]["node_count"] == 1


def test_running_job_progresses(emulator, api):
    pending = api("GET", "/training-jobs/job-running").json()["status"]
    assert pending["phase"] == "Pending"
    assert pending["secondary_phase"] == "Queuing"
    assert pending["start_time"] == 0 and pending["task_statuses"] == []
    emulator.advance(3)
    running = api("GET", "/training-jobs/job-running").json()["status"]
    assert running["phase"] == "Running"
    assert running["start_time"] > 0 and running["duration"] >= 1900
    assert "exit_code" not in running["task_statuses"][0]
    preview = api("GET", "/training-jobs/job-running/tasks/worker-0/logs/preview").json()
    assert 0 < preview["full_size"] < emulator.log_size("job-running", "worker-0")
    emulator.advance(3)
    done = api("GET", "/training-jobs/job-running").json()["status"]
    assert done["phase"] == "Completed"
    assert done["duration"] == 4000
    assert done["task_statuses"][0]["exit_code"] == 0


def test_search_pages_and_filters(emulator, api):
    def search(**body):
        resp = api("POST", "/training-job-searches", json=body)
        assert resp.status_code == 200, resp.text
        return resp.json()

    everything = search(limit=50)
    assert everything["total"] == 4
    ids = [item["metadata"]["id"] for item in everything["items"]]
    assert ids == ["job-multi", "job-running", "job-failed", "job-ok"]  # newest first
    pages = [search(limit=3, offset=0), search(limit=3, offset=1), search(limit=3, offset=2)]
    assert [p["count"] for p in pages] == [3, 1, 0]
    assert [i["metadata"]["id"] for p in pages for i in p["items"]] == ids
    assert search(order="asc", limit=50)["items"][0]["metadata"]["id"] == "job-ok"
    completed = search(limit=50, filters=[{"key": "phase", "operator": "in", "value": ["Completed"]}])
    assert {i["metadata"]["id"] for i in completed["items"]} == {"job-ok", "job-multi"}
    created = [i["metadata"]["create_time"] for i in everything["items"]]
    window = search(
        limit=50,
        filters=[{"key": "create_time", "operator": "between", "value": [str(created[2]), str(created[1])]}],
    )
    assert [i["metadata"]["id"] for i in window["items"]] == ["job-running", "job-failed"]
    named = search(limit=50, filters=[{"key": "name", "operator": "like", "value": ["FAIL"]}])
    assert [i["metadata"]["id"] for i in named["items"]] == ["job-failed"]
    for bad in (
        {"limit": 0},
        {"limit": 51},
        {"offset": -1},
        {"filters": [{"key": "x", "operator": "in", "value": []}]},
    ):
        resp = api("POST", "/training-job-searches", json=bad)
        assert resp.status_code == 400
        assert resp.json()["error_code"] == "ModelArts.2788"
    assert emulator.counters["search"] >= 9


def test_tasks_and_terminate(emulator, api):
    tasks = api("GET", "/training-jobs/job-multi/tasks").json()
    assert [t["task"] for t in tasks] == ["worker-0", "worker-1"]
    emulator.advance(2)
    stopped = api("POST", "/training-jobs/job-running/actions", json={"action_type": "terminate"})
    assert stopped.status_code == 200
    assert stopped.json()["status"]["phase"] == "Terminated"
    size = emulator.log_size("job-running", "worker-0")
    assert 0 < size < 262144
    emulator.advance(10)
    assert api("GET", "/training-jobs/job-running").json()["status"]["phase"] == "Terminated"
    again = api("POST", "/training-jobs/job-running/actions", json={"action_type": "terminate"})
    assert again.status_code == 409
    assert again.json()["error_code"] == "ModelArts.2796"
    assert api("POST", "/training-jobs/job-ok/actions", json={"action_type": "pause"}).status_code == 400
    assert emulator.counters["actions"] == 3


# ------------------------------------------------------------------ logs and OBS


def test_preview_returns_last_five_mib(emulator_factory):
    size = 6 * 1024 * 1024 + 17
    emu = emulator_factory(
        {"jobs": [{"id": "big", "tasks": [{"id": "worker-0", "log": {"generate": {"size": size}}}]}]}
    )
    api = Api(emu)
    body = api("GET", "/training-jobs/big/tasks/worker-0/logs/preview").json()
    assert body["full_size"] == size
    assert body["current_size"] == 5 * 1024 * 1024
    assert body["content"].encode() == emu.log_bytes("big", "worker-0", size - 5 * 1024 * 1024)


def test_log_url_kinds(emulator, api):
    preview = api.link("job-ok", "worker-0")
    download = api.link("job-ok", "worker-0", "application/octet-stream")
    by_query = api(
        "GET",
        "/training-jobs/job-ok/tasks/worker-0/logs/url",
        params={"Content-Type": "application/octet-stream"},
    ).json()["obs_url"]
    assert "response-content-disposition" not in preview
    assert "response-content-disposition" in download and "response-content-disposition" in by_query
    query = parse_qs(urlsplit(preview).query)
    assert set(query) == {"AccessKeyId", "Expires", "Signature"}
    assert abs(int(query["Expires"][0]) - (time.time() + 300)) < 5
    got = requests.get(preview, timeout=10)
    assert got.headers["Content-Type"].startswith("text/plain")
    got_dl = requests.get(download, timeout=10)
    assert got_dl.headers["Content-Type"] == "application/octet-stream"
    assert got_dl.headers["Content-Disposition"].startswith("attachment")
    assert got.content == got_dl.content == emulator.log_bytes("job-ok", "worker-0")
    bad = api("GET", "/training-jobs/job-ok/tasks/worker-0/logs/url", params={"Content-Type": "image/png"})
    assert bad.status_code == 400
    no_task = api("GET", "/training-jobs/job-ok/tasks/worker-9/logs/url")
    assert no_task.status_code == 400


def test_obs_full_download_and_ranges(emulator, api):
    url = api.link("job-multi", "worker-0")
    full = requests.get(url, timeout=10)
    assert full.status_code == 200
    assert int(full.headers["Content-Length"]) == 1048576
    assert hashlib.sha256(full.content).hexdigest() == emulator.log_sha256("job-multi", "worker-0")
    tail = requests.get(url, headers={"Range": "bytes=1000000-"}, timeout=10)
    assert tail.status_code == 206
    assert tail.headers["Content-Range"] == "bytes 1000000-1048575/1048576"
    assert tail.content == full.content[1000000:]
    middle = requests.get(url, headers={"Range": "bytes=10-19"}, timeout=10)
    assert middle.status_code == 206 and middle.content == full.content[10:20]
    assert middle.headers["Content-Length"] == "10"
    suffix = requests.get(url, headers={"Range": "bytes=-5"}, timeout=10)
    assert suffix.content == full.content[-5:]
    beyond = requests.get(url, headers={"Range": "bytes=1048576-"}, timeout=10)
    assert beyond.status_code == 416
    assert beyond.headers["Content-Range"] == "bytes */1048576"
    emulator.knobs.ignore_range = True
    ignored = requests.get(url, headers={"Range": "bytes=10-19"}, timeout=10)
    assert ignored.status_code == 200 and len(ignored.content) == 1048576
    assert emulator.counters["obs_get"] == 6
    assert emulator.counters["bytes_served"] == 2 * 1048576 + (1048576 - 1000000) + 10 + 5


def test_obs_head(api):
    url = api.link("job-ok", "worker-0")
    head = requests.head(url, timeout=10)
    assert head.status_code == 200
    assert int(head.headers["Content-Length"]) == api.emu.log_size("job-ok", "worker-0")


def test_obs_link_expiry(emulator, api):
    emulator.knobs.link_ttl = 1
    url = api.link("job-ok", "worker-0")
    assert requests.get(url, timeout=10).status_code == 200
    emulator.advance(2)
    expired = requests.get(url, timeout=10)
    assert expired.status_code == 403
    assert expired.headers["Content-Type"] == "application/xml"
    assert "<Code>RequestTimeTooSkewed</Code>" in expired.text
    assert "<Message>Request has expired.</Message>" in expired.text
    emulator.knobs.link_ttl = 0
    assert requests.get(api.link("job-ok", "worker-0"), timeout=10).status_code == 403


@pytest.mark.parametrize(
    "tamper",
    [
        lambda u: u.replace("Signature=", "Signature=A"),
        lambda u: u.replace("Expires=", "Expires=9"),
        lambda u: u.split("?")[0],
        lambda u: u.replace("job-multi-worker-0", "job-multi-worker-1").replace("job-multi/", "job-multi/"),
        lambda u: u.replace("AccessKeyId=", "AccessKeyId=X"),
    ],
)
def test_obs_bad_signature(api, tamper):
    url = tamper(api.link("job-multi", "worker-0"))
    resp = requests.get(url, timeout=10)
    assert resp.status_code == 403
    assert "<Code>SignatureDoesNotMatch</Code>" in resp.text


def test_obs_download_link_cannot_be_turned_into_preview(api):
    url = api.link("job-ok", "worker-0", "application/octet-stream")
    stripped = url.split("&response-content-disposition")[0]
    assert requests.get(stripped, timeout=10).status_code == 403


def test_obs_link_of_growing_log(emulator, api):
    emulator.advance(2)
    url = api.link("job-running", "worker-0")
    first = requests.get(url, timeout=10).content
    emulator.advance(1)
    second = requests.get(url, timeout=10).content
    assert 0 < len(first) < len(second) <= emulator.log_size("job-running", "worker-0")
    assert second.startswith(first)
    rest = requests.get(url, headers={"Range": f"bytes={len(first)}-"}, timeout=10)
    assert (first + rest.content).startswith(second)


# ------------------------------------------------------------------ fault knobs


def test_throttle_ratio(emulator, api):
    emulator.knobs.throttle_ratio = 0.5
    emulator.knobs.retry_after = 2
    statuses = [api("GET", "/training-jobs/job-ok") for _ in range(6)]
    assert [r.status_code for r in statuses] == [200, 429, 200, 429, 200, 429]
    throttled = statuses[1]
    assert throttled.headers["Retry-After"] == "2"
    assert throttled.json()["error_code"] == "APIG.0308"
    assert throttled.json()["request_id"] == throttled.headers["X-Request-Id"]
    assert emulator.counters["throttled"] == 3
    assert emulator.counters["job"] == 6
    emulator.knobs.throttle_ratio = 1.0
    emulator.knobs.retry_after = None
    always = api("GET", "/training-jobs/job-ok")
    assert always.status_code == 429 and "Retry-After" not in always.headers


def test_error_burst(emulator, api):
    emulator.knobs.error_burst = 2
    codes = [api("GET", "/training-jobs/job-ok").status_code for _ in range(3)]
    assert codes == [500, 500, 200]
    emulator.knobs.error_burst = 1
    emulator.knobs.error_status = 503
    resp = api("GET", "/training-jobs/job-ok")
    assert resp.status_code == 503 and resp.json()["error_code"] == "APIG.0203"
    assert emulator.counters["server_error"] == 3


def test_expire_token_once(emulator, api):
    emulator.knobs.expire_token_once = True
    first = api("GET", "/training-jobs/job-ok")
    assert first.status_code == 401
    assert "token expires" in first.json()["error_msg"]
    assert not emulator.knobs.expire_token_once
    assert api("GET", "/training-jobs/job-ok").status_code == 401  # the old token stays expired
    fresh = _token(emulator)
    assert api("GET", "/training-jobs/job-ok", token=fresh).status_code == 200


def test_latency(emulator, api):
    emulator.knobs.latency = 0.3
    started = time.monotonic()
    assert api("GET", "/training-jobs/job-ok").status_code == 200
    assert time.monotonic() - started >= 0.3


def test_drop_after_bytes(emulator, api):
    emulator.knobs.drop_after_bytes = 1000
    emulator.knobs.drop_downloads = 2
    url = api.link("job-multi", "worker-1")
    for _ in range(2):
        with pytest.raises(requests.exceptions.ChunkedEncodingError):
            requests.get(url, timeout=10).content  # noqa: B018
    ok = requests.get(url, timeout=10)
    assert hashlib.sha256(ok.content).hexdigest() == emulator.log_sha256("job-multi", "worker-1")
    assert emulator.counters["dropped"] == 2
    assert emulator.counters["bytes_served"] == 2000 + 524288


def test_download_shorter_than_the_cut_is_sent_whole_and_keeps_the_drop(emulator, api):
    size = emulator.log_size("job-multi", "worker-1")
    emulator.knobs.drop_after_bytes = size
    emulator.knobs.drop_downloads = 1
    url = api.link("job-multi", "worker-1")
    whole = requests.get(url, timeout=10)
    assert hashlib.sha256(whole.content).hexdigest() == emulator.log_sha256("job-multi", "worker-1")
    assert emulator.counters["dropped"] == 0 and emulator.knobs.drop_downloads == 1
    emulator.knobs.drop_after_bytes = size - 1
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        requests.get(url, timeout=10).content  # noqa: B018
    assert emulator.counters["dropped"] == 1 and emulator.knobs.drop_downloads == 0


def test_drop_then_resume_with_range(emulator, api):
    emulator.knobs.drop_after_bytes = 300_000
    emulator.knobs.drop_downloads = 1
    url = api.link("job-multi", "worker-0")
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    conn.request("GET", f"{parts.path}?{parts.query}")
    resp = conn.getresponse()
    assert resp.status == 200 and resp.getheader("Content-Length") == "1048576"
    with pytest.raises(http.client.IncompleteRead) as cut:
        resp.read()
    conn.close()
    received = cut.value.partial
    assert len(received) == 300_000
    rest = requests.get(url, headers={"Range": f"bytes={len(received)}-"}, timeout=10)
    assert rest.status_code == 206
    assert hashlib.sha256(received + rest.content).hexdigest() == emulator.log_sha256("job-multi", "worker-0")


def test_reset_counters(emulator, api):
    api("GET", "/training-jobs/job-ok")
    assert emulator.counters["job"] == 1
    emulator.reset_counters()
    assert emulator.counters["job"] == 0
    assert dict(emulator.counters)["iam_token"] == 0


def test_add_job_at_runtime(emulator, api):
    emulator.add_job(
        {"id": "late", "timeline": [{"phase": "Running", "at": 0}, {"phase": "Completed", "at": 10}]}
    )
    assert api("GET", "/training-jobs/late").json()["status"]["phase"] == "Running"
    emulator.advance(11)
    assert api("GET", "/training-jobs/late").json()["status"]["phase"] == "Completed"


def test_connection_helpers(emulator):
    from airflow.models.connection import Connection

    conn = json.loads(emulator.connection_json())
    assert conn["login"] == emulator.ak and conn["extra"]["endpoint"] == emulator.url
    token_conn = json.loads(emulator.connection_json("token"))
    assert token_conn["extra"]["auth_type"] == "token" and token_conn["extra"]["iam_endpoint"] == emulator.url
    parsed = Connection(uri=emulator.connection_uri())
    assert parsed.login == emulator.ak and parsed.password == emulator.sk
    assert parsed.extra_dejson["project_id"] == emulator.project_id
    assert parsed.extra_dejson["endpoint"] == emulator.url
    with pytest.raises(ValueError):
        emulator.connection_json("basic")


def test_delete_job(emulator, api):
    assert api("DELETE", "/training-jobs/job-ok").status_code == 202
    assert api("GET", "/training-jobs/job-ok").status_code == 404
    assert "job-ok" not in emulator.job_ids()


def test_concurrent_requests_are_all_counted(emulator):
    from concurrent.futures import ThreadPoolExecutor

    token = _token(emulator)
    url = f"{emulator.url}/v2/{emulator.project_id}/training-jobs/job-ok"
    emulator.knobs.throttle_ratio = 0.25
    emulator.knobs.retry_after = None

    def worker(_: int) -> list[int]:
        with requests.Session() as session:
            return [
                session.get(url, headers={"X-Auth-Token": token}, timeout=10).status_code for _ in range(25)
            ]

    with ThreadPoolExecutor(8) as pool:
        codes = [code for batch in pool.map(worker, range(8)) for code in batch]
    assert len(codes) == 200
    assert codes.count(429) == 50 == emulator.counters["throttled"]
    assert emulator.counters["job"] == 200


def test_unsupported_method_and_internal_errors_still_answer(emulator, api, monkeypatch):
    resp = requests.request("OPTIONS", f"{emulator.url}/v2/x", timeout=10)
    assert resp.status_code == 501
    assert resp.headers["X-Request-Id"]

    def broken(*args, **kwargs):
        raise RuntimeError("bug")

    monkeypatch.setattr("airflow_provider_modelarts.emulator.api.preview_body", broken)
    failed = api("GET", "/training-jobs/job-ok/tasks/worker-0/logs/preview")
    assert failed.status_code == 500
    assert failed.json()["error_code"] == "ModelArts.0010"
    assert api("GET", "/training-jobs/job-ok").status_code == 200


@pytest.mark.slow
def test_large_generated_log_streams_intact(emulator_factory):
    size = 256 * 1024 * 1024 + 3
    emu = emulator_factory(
        {"jobs": [{"id": "big", "tasks": [{"id": "worker-0", "log": {"generate": {"size": size}}}]}]}
    )
    emu.knobs.drop_after_bytes = 100 * 1024 * 1024
    emu.knobs.drop_downloads = 1
    url = Api(emu).link("big", "worker-0", "application/octet-stream")
    digest = hashlib.sha256()
    received = 0
    with (
        requests.get(url, stream=True, timeout=30) as resp,
        pytest.raises(requests.exceptions.ChunkedEncodingError),
    ):
        for chunk in resp.iter_content(1024 * 1024):
            digest.update(chunk)
            received += len(chunk)
    with requests.get(url, headers={"Range": f"bytes={received}-"}, stream=True, timeout=30) as resp:
        assert resp.status_code == 206
        for chunk in resp.iter_content(1024 * 1024):
            digest.update(chunk)
            received += len(chunk)
    assert received == size
    assert digest.hexdigest() == emu.log_sha256("big", "worker-0")
