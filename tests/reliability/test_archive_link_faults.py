"""The archive against a misbehaving link server over real HTTP, read by the real ``ModelArtsHook``.

Truncation without Content-Length (close-delimited and gzip), ``*`` totals, trickle, redirects, foreign
hosts, ``user:pass@``, the request count of the one retry policy, and link signatures in tracebacks.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import traceback

import pytest
from airflow.providers.common.compat.sdk import ObjectStoragePath

from airflow_provider_modelarts.connection import DEFAULT_MAX_RETRIES
from airflow_provider_modelarts.exceptions import (
    ModelArtsApiError,
    ModelArtsLogTransferError,
    ModelArtsTransportError,
    ModelArtsValidationError,
)
from airflow_provider_modelarts.transfer import DEFAULT_MAX_ATTEMPTS, archive_task_log
from tests.reliability._link_server import (
    DATA,
    HookLinkSource,
    LinkServer,
    Reply,
    gzip_reply,
    make_hook,
    serve_range,
)
from tests.reliability._secrets import find_leaks


@pytest.fixture
def server():
    with LinkServer() as srv:
        yield srv


@pytest.fixture
def target(tmp_path):
    return ObjectStoragePath(f"file://{tmp_path}/archive/job-1/worker-0.log")


def copy(source, target, **kw):
    kw.setdefault("phase", "Completed")
    kw.setdefault("chunk_size", 16 * 1024)
    return archive_task_log(source, "job-1", "worker-0", target, **kw)


def stored(target) -> bytes:
    return open(target.path, "rb").read()


def leftovers(target) -> list[str]:
    parent = os.path.dirname(target.path)
    return sorted(os.listdir(parent)) if os.path.isdir(parent) else []


# -- never a truncated log ------------------------------------------------------------------------


def test_close_delimited_body_is_checked_by_a_probe_past_the_end(server, target, monkeypatch):
    server.behave = lambda req: (
        Reply(body=DATA, length=None) if req.offset is None else serve_range(DATA, req)
    )
    res = copy(HookLinkSource(make_hook(monkeypatch), server), target)
    assert stored(target) == DATA and res.size == len(DATA)
    assert [r.offset for r in server.gets()] == [None, len(DATA)]  # the body, then the 416 probe


def test_close_delimited_body_cut_halfway_is_resumed_not_committed(server, target, monkeypatch):
    half = len(DATA) // 2

    def behave(req):
        if req.number == 1:
            return Reply(body=DATA, length=None, cut=half)  # looks like a clean end
        return serve_range(DATA, req)

    server.behave = behave
    res = copy(HookLinkSource(make_hook(monkeypatch), server), target)
    assert stored(target) == DATA and res.sha256 == hashlib.sha256(DATA).hexdigest()
    # The probe past the apparent end finds the rest (206 with the total), which is then read.
    assert [r.offset for r in server.gets()] == [None, half]


@pytest.mark.parametrize("with_length", [False, True])
def test_gzip_body_cut_halfway_restarts_and_never_commits_the_part(server, target, monkeypatch, with_length):
    whole = gzip.compress(DATA, mtime=0)

    def behave(req):
        reply = gzip_reply(DATA, length="auto" if with_length else None)
        if req.number == 1:
            reply.cut = len(whole) // 2
        return reply

    server.behave = behave
    res = copy(HookLinkSource(make_hook(monkeypatch), server), target)
    assert stored(target) == DATA and res.size == len(DATA)
    assert res.restarts == 1 and len(server.gets()) == 2


def test_gzip_body_that_is_always_cut_fails_and_leaves_nothing(server, target, monkeypatch):
    whole = gzip.compress(DATA, mtime=0)
    server.behave = lambda req: Reply(
        headers={"Content-Encoding": "gzip"}, body=whole[: len(whole) // 2], length=None
    )
    with pytest.raises(ModelArtsLogTransferError, match="Giving up"):
        copy(HookLinkSource(make_hook(monkeypatch), server), target, max_attempts=2)
    assert leftovers(target) == []


def test_star_total_never_replaces_a_known_total(server, target, monkeypatch):
    """The resume says bytes 5000-89699/*: 89,700 bytes must not be committed as a 90,000-byte log."""
    data = DATA[:90_000]

    def behave(req):
        if req.number == 1:
            return Reply(body=data, cut=5000)  # Content-Length 90000, connection drops
        if req.offset == 5000:
            return Reply(status=206, headers={"Content-Range": "bytes 5000-89699/*"}, body=data[5000:89700])
        return serve_range(data, req)

    server.behave = behave
    res = copy(HookLinkSource(make_hook(monkeypatch), server), target)
    assert stored(target) == data and res.size == 90_000 and res.restarts >= 1


def test_a_different_total_on_resume_restarts_the_file(server, target, monkeypatch):
    def behave(req):
        if req.number == 1:
            return Reply(body=DATA, cut=4000)
        if req.offset:
            return serve_range(DATA, req, total=str(len(DATA) + 10))
        return Reply(body=DATA)

    server.behave = behave
    res = copy(HookLinkSource(make_hook(monkeypatch), server), target)
    assert stored(target) == DATA and res.restarts == 1


def test_star_total_from_the_start_is_probed(server, target, monkeypatch):
    def behave(req):
        if req.offset is None:
            return Reply(status=206, headers={"Content-Range": f"bytes 0-{len(DATA) - 1}/*"}, body=DATA)
        return serve_range(DATA, req)

    server.behave = behave
    copy(HookLinkSource(make_hook(monkeypatch), server), target)
    assert stored(target) == DATA and [r.offset for r in server.gets()] == [None, len(DATA)]


def test_a_store_that_never_states_a_total_and_ignores_ranges_fails(server, target, monkeypatch):
    server.behave = lambda req: Reply(body=DATA, length=None)
    with pytest.raises(ModelArtsLogTransferError, match="Giving up"):
        copy(HookLinkSource(make_hook(monkeypatch), server), target, max_attempts=3)
    assert leftovers(target) == []


# -- stalls ---------------------------------------------------------------------------------------


def test_a_trickling_link_is_a_stall_and_gets_a_fresh_link(server, target, monkeypatch):
    def behave(req):
        if req.number == 1:
            return Reply(body=DATA, trickle=0.1, piece=50)  # 500 B/s, never silent long enough to time out
        return serve_range(DATA, req)

    server.behave = behave
    source = HookLinkSource(make_hook(monkeypatch), server)
    res = copy(source, target, stall_window=0.5, stall_min_rate=4096)
    assert stored(target) == DATA and source.links == 2
    assert 0 < server.gets()[1].offset < len(DATA)  # resumed, not restarted
    assert res.restarts == 0


# -- links read only where the API pointed ----------------------------------------------------------


def test_redirect_to_a_foreign_host_is_not_followed(server, target, monkeypatch):
    with LinkServer(lambda req: Reply(body=b"not the log")) as foreign:
        server.behave = lambda req: Reply(status=302, headers={"Location": foreign.url + "/x"}, body=b"")
        with pytest.raises(ModelArtsApiError, match="302"):
            copy(HookLinkSource(make_hook(monkeypatch), server), target)
        assert foreign.requests == []
    assert len(server.gets()) == 1 and leftovers(target) == []


def test_redirect_loop_costs_one_request(server, target, monkeypatch):
    server.behave = lambda req: Reply(status=302, headers={"Location": server.url + req.path}, body=b"")
    with pytest.raises(ModelArtsApiError):
        copy(HookLinkSource(make_hook(monkeypatch), server), target)
    assert len(server.gets()) == 1


def test_credentials_in_a_link_are_refused_before_any_request(server, target, monkeypatch):
    host = server.url.removeprefix("http://")
    source = HookLinkSource(
        make_hook(monkeypatch), server, link=lambda n, t: f"http://user:pass@{host}/logs/x.log?Signature=S{n}"
    )
    with pytest.raises(ModelArtsValidationError, match="user:password"):
        copy(source, target)
    assert server.requests == []


def test_log_link_hosts_restricts_link_hosts(server, target, monkeypatch):
    hook = make_hook(monkeypatch, log_link_hosts=["*.obs.cn-north-4.myhuaweicloud.com"])
    server.behave = lambda req: serve_range(DATA, req)
    with pytest.raises(ModelArtsValidationError, match="log_link_hosts"):
        copy(HookLinkSource(hook, server), target)
    assert server.requests == []
    allowed = make_hook(monkeypatch, log_link_hosts=["127.0.0.*"])
    copy(HookLinkSource(allowed, server), target)
    assert stored(target) == DATA


def test_links_are_read_without_the_api_sessions_cookies_or_headers(server, target, monkeypatch):
    hook = make_hook(monkeypatch)
    hook.session.cookies.set("api-session", "COOKIE-VALUE")
    hook.session.headers["X-Auth-Token"] = "API-TOKEN"
    server.behave = lambda req: serve_range(DATA, req)
    copy(HookLinkSource(hook, server), target)
    (req,) = server.gets()
    assert "cookie" not in req.headers and "x-auth-token" not in req.headers
    assert "authorization" not in req.headers
    assert req.headers.get("accept-encoding") == "identity"


# -- one retry policy -------------------------------------------------------------------------------


def test_worst_case_request_count_of_a_link_that_always_drops(server, target, monkeypatch):
    """Defaults: every interruption gets one fresh link and one GET; the hook only retries failed opens."""
    server.behave = lambda req: serve_range(DATA, req, cut=1000)
    source = HookLinkSource(make_hook(monkeypatch), server)
    with pytest.raises(ModelArtsLogTransferError, match=f"after {DEFAULT_MAX_ATTEMPTS + 1} interruptions"):
        copy(source, target)
    assert len(server.gets()) == DEFAULT_MAX_ATTEMPTS + 1
    assert source.links == DEFAULT_MAX_ATTEMPTS + 1


def test_worst_case_request_count_of_a_link_that_always_answers_503(server, target, monkeypatch):
    server.behave = lambda req: Reply(status=503, body=b"<Error><Code>ServiceUnavailable</Code></Error>")
    source = HookLinkSource(make_hook(monkeypatch), server)
    with pytest.raises(ModelArtsApiError, match="503"):
        copy(source, target)
    assert len(server.gets()) == DEFAULT_MAX_RETRIES + 1 and source.links == 1


@pytest.mark.parametrize("status", [400, 401, 404, 410])
def test_other_4xx_fail_at_once(server, target, monkeypatch, status):
    server.behave = lambda req: Reply(status=status, body=b"<Error><Code>Nope</Code></Error>")
    with pytest.raises(ModelArtsApiError):
        copy(HookLinkSource(make_hook(monkeypatch), server), target)
    assert len(server.gets()) == 1


# -- no signature anywhere --------------------------------------------------------------------------


def _chain_text(err: BaseException) -> str:
    parts, seen, current = [], set(), err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        parts += [str(current), repr(current), repr(getattr(current, "args", ()))]
        current = current.__cause__ or current.__context__
    parts += traceback.format_exception(err)
    return "\n".join(parts)


def test_no_answer_from_the_link_host_leaves_no_signature_in_the_chain(tmp_path, target, monkeypatch):
    class Refused:
        url = "http://127.0.0.1:9"

        def link(self, n, task):
            return f"{self.url}/logs/{task}.log?AccessKeyId=AK&Expires=1&Signature=SIGNATURE{n}"

    source = HookLinkSource(make_hook(monkeypatch, retries=1), Refused())  # type: ignore[arg-type]
    with pytest.raises(ModelArtsTransportError) as ei:
        copy(source, target)
    text = _chain_text(ei.value)
    assert "SIGNATURE" not in text and not find_leaks(text, ["SIGNATURE1"])


def test_job_archive_error_holds_no_signature(server, tmp_path, monkeypatch):
    from airflow_provider_modelarts.transfer import TrainingJobLogArchiver

    server.behave = lambda req: Reply(body=DATA, cut=100)
    hook = make_hook(monkeypatch)
    archiver = TrainingJobLogArchiver(
        lambda: HookLinkSource(hook, server), ObjectStoragePath(f"file://{tmp_path}/a"), max_attempts=1
    )
    job = {"metadata": {"id": "job-1", "name": "n"}, "status": {"phase": "Completed", "tasks": ["worker-0"]}}
    with pytest.raises(ModelArtsLogTransferError) as ei:
        archiver.archive(job, training_job_id="job-1")
    text = _chain_text(ei.value) + (tmp_path / "a/job-1/manifest.json").read_text()
    assert "SIGNATURE" not in text
