"""Bad input: every malformed id, connection, server answer or destination gives a typed, named error.

Each case checks four things:

* the error is a provider error (a :class:`ModelArtsError` subclass) or ``ValueError``/``TypeError`` for a bad
  argument, never a bare ``KeyError``, ``JSONDecodeError`` or ``AttributeError``;
* its message names the problem (one of the expected words appears);
* it does not hang (pytest-timeout per case);
* no request was sent outside ``/v2/{project_id}/`` (the scripted server records every request).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import tenacity

from airflow_provider_modelarts.exceptions import (
    ModelArtsApiError,
    ModelArtsConfigError,
    ModelArtsError,
    ModelArtsNotFoundError,
    ModelArtsResponseError,
    ModelArtsValidationError,
)
from tests.reliability._servers import Answer, ScriptedServer

pytestmark = [pytest.mark.integration, pytest.mark.timeout(30)]

PROJECT_ID = "0123456789abcdef0123456789abcdef"
AK = "RELIABILITYAK0000001"
SK = "reliability-secret-key-0000000000000000000"
JOB = "job-ok"
JOB_BODY = {
    "metadata": {"id": JOB, "name": "ok"},
    "status": {"phase": "Completed", "tasks": ["worker-0", "worker-1"]},
}
FORBIDDEN = (KeyError, AttributeError, json.JSONDecodeError, IndexError)


def _conn(server_url: str, **extra: Any) -> str:
    base_extra = {"project_id": PROJECT_ID, "endpoint": server_url}
    base_extra.update(extra)
    return json.dumps({"conn_type": "modelarts", "login": AK, "password": SK, "extra": base_extra})


def _default_route(method: str, path: str) -> Answer:
    if path.endswith("/logs/url") or "/logs/url?" in path:
        return Answer(body=json.dumps({"obs_url": "http://127.0.0.1:1/bucket/log?Expires=1&Signature=x"}))
    if path.endswith("/logs/preview"):
        return Answer(body=json.dumps({"content": "hi", "current_size": 2, "full_size": 2}))
    if path.endswith("/tasks"):
        return Answer(body=json.dumps([{"task": "worker-0"}, {"task": "worker-1"}]))
    return Answer(body=json.dumps(JOB_BODY))


@dataclass
class Case:
    """One bad-input case.

    :param call: what to do with a sync hook (``hook -> result``).
    :param errors: acceptable exception types.
    :param words: at least one must appear (case-insensitively) in the message.
    :param route: the server's answers; default: a healthy ModelArts.
    :param conn: connection JSON factory given the server URL; default: healthy AK/SK connection.
    """

    call: Callable[[Any], Any]
    errors: tuple[type[BaseException], ...]
    words: tuple[str, ...]
    route: Callable[[str, str], Answer] = _default_route
    conn: Callable[[str], str] = field(default=_conn)


def _answer_for(suffix: str, answer: Answer) -> Callable[[str, str], Answer]:
    def route(method: str, path: str) -> Answer:
        return answer if path.split("?", maxsplit=1)[0].endswith(suffix) else _default_route(method, path)

    return route


ID_ERRORS = (ModelArtsValidationError, ValueError, TypeError)
CONF_ERRORS = (ModelArtsConfigError,)


def _get_job(job_id: Any) -> Callable[[Any], Any]:
    return lambda hook: hook.get_training_job(job_id)


def _log_url(job_id: Any, task_id: Any) -> Callable[[Any], Any]:
    return lambda hook: hook.get_task_log_url(job_id, task_id)


_LONG = "j" * 10_000
CASES: dict[str, Case] = {
    # --- ids -------------------------------------------------------------------------------------
    "job-id-slash": Case(_get_job("a/b"), ID_ERRORS, ("a/b", "'/'", "training_job_id", "job id")),
    "job-id-dotdot": Case(_get_job(".."), ID_ERRORS, ("..", "training_job_id", "job id")),
    "job-id-dotdot-inside": Case(_get_job("a..b"), ID_ERRORS, ("..", "training_job_id", "job id")),
    "job-id-traversal": Case(_get_job("../../v3/auth"), ID_ERRORS, ("..", "training_job_id", "job id")),
    "job-id-question": Case(_get_job("job?x=1"), ID_ERRORS, ("?", "training_job_id", "job id")),
    "job-id-hash": Case(_get_job("job#frag"), ID_ERRORS, ("#", "training_job_id", "job id")),
    "job-id-space": Case(_get_job("job 1"), ID_ERRORS, ("whitespace", "space", "training_job_id", "job id")),
    "job-id-tab": Case(_get_job("job\t1"), ID_ERRORS, ("whitespace", "training_job_id", "job id")),
    "job-id-newline": Case(_get_job("job\n1"), ID_ERRORS, ("whitespace", "training_job_id", "job id")),
    "job-id-leading-space": Case(_get_job(" job"), ID_ERRORS, ("whitespace", "training_job_id", "job id")),
    "job-id-empty": Case(_get_job(""), ID_ERRORS, ("empty", "training_job_id", "job id")),
    "job-id-10k": Case(_get_job(_LONG), ID_ERRORS, ("256", "long", "length")),
    "job-id-none": Case(_get_job(None), ID_ERRORS, ("str", "none", "training_job_id", "job id")),
    "job-id-int": Case(_get_job(123), ID_ERRORS, ("str", "int", "training_job_id", "job id")),
    "job-id-bytes": Case(_get_job(b"job"), ID_ERRORS, ("str", "bytes", "training_job_id", "job id")),
    "job-id-list": Case(_get_job(["job"]), ID_ERRORS, ("str", "list", "training_job_id", "job id")),
    "task-id-slash": Case(_log_url(JOB, "worker/0"), ID_ERRORS, ("task_id", "task id", "worker/0")),
    "task-id-dotdot": Case(_log_url(JOB, ".."), ID_ERRORS, ("task_id", "task id", "..")),
    "task-id-empty": Case(_log_url(JOB, ""), ID_ERRORS, ("task_id", "task id", "empty")),
    "task-id-question": Case(_log_url(JOB, "w?0"), ID_ERRORS, ("task_id", "task id", "?")),
    "task-id-none": Case(_log_url(JOB, None), ID_ERRORS, ("task_id", "task id", "str", "none")),
    "preview-task-id-hash": Case(
        lambda hook: hook.preview_task_log(JOB, "w#0"), ID_ERRORS, ("task_id", "task id", "#")
    ),
    # --- connection ------------------------------------------------------------------------------
    "conn-no-project-id": Case(
        _get_job(JOB),
        CONF_ERRORS,
        ("project_id",),
        conn=lambda url: json.dumps(
            {"conn_type": "modelarts", "login": AK, "password": SK, "extra": {"endpoint": url}}
        ),
    ),
    "conn-project-id-slash": Case(
        _get_job(JOB), CONF_ERRORS, ("project_id",), conn=lambda url: _conn(url, project_id="abc/def")
    ),
    "conn-project-id-65-chars": Case(
        _get_job(JOB), CONF_ERRORS, ("project_id",), conn=lambda url: _conn(url, project_id="a" * 65)
    ),
    "conn-endpoint-not-url": Case(
        _get_job(JOB), CONF_ERRORS, ("endpoint",), conn=lambda url: _conn(url, endpoint="not a url")
    ),
    "conn-endpoint-ftp": Case(
        _get_job(JOB), CONF_ERRORS, ("endpoint",), conn=lambda url: _conn(url, endpoint="ftp://127.0.0.1/x")
    ),
    "conn-endpoint-no-host": Case(
        _get_job(JOB), CONF_ERRORS, ("endpoint",), conn=lambda url: _conn(url, endpoint="http://")
    ),
    "conn-unknown-auth-type": Case(
        _get_job(JOB), CONF_ERRORS, ("auth_type",), conn=lambda url: _conn(url, auth_type="kerberos")
    ),
    "conn-extra-not-json": Case(
        _get_job(JOB),
        CONF_ERRORS,
        ("extra", "json"),
        conn=lambda url: json.dumps(
            {"conn_type": "modelarts", "login": AK, "password": SK, "extra": "{project_id: oops"}
        ),
    ),
    "conn-aksk-without-sk": Case(
        _get_job(JOB),
        CONF_ERRORS,
        ("secret", "password", "sk"),
        conn=lambda url: json.dumps(
            {"conn_type": "modelarts", "login": AK, "extra": {"project_id": PROJECT_ID, "endpoint": url}}
        ),
    ),
    "conn-token-without-password": Case(
        _get_job(JOB),
        CONF_ERRORS,
        ("password",),
        conn=lambda url: json.dumps(
            {
                "conn_type": "modelarts",
                "login": "user",
                "extra": {
                    "project_id": PROJECT_ID,
                    "endpoint": url,
                    "auth_type": "token",
                    "iam_endpoint": url,
                    "domain_name": "acct",
                },
            }
        ),
    ),
    # --- server answers --------------------------------------------------------------------------
    "server-500-not-json": Case(
        _get_job(JOB),
        (ModelArtsApiError,),
        ("500",),
        route=_answer_for(JOB, Answer(500, "Internal Server Error", "text/plain")),
    ),
    "server-502-html": Case(
        _get_job(JOB),
        (ModelArtsApiError,),
        ("502",),
        route=_answer_for(
            JOB, Answer(502, "<html><body><h1>502 Bad Gateway</h1></body></html>", "text/html")
        ),
    ),
    "server-400-not-json": Case(
        _get_job(JOB),
        (ModelArtsApiError,),
        ("400",),
        route=_answer_for(JOB, Answer(400, "bad", "text/plain")),
    ),
    "server-404-names-job": Case(
        _get_job(JOB),
        (ModelArtsNotFoundError,),
        (JOB,),
        route=_answer_for(
            JOB, Answer(404, json.dumps({"error_code": "ModelArts.2775", "error_msg": "not found"}))
        ),
    ),
    "server-200-truncated-json": Case(
        _get_job(JOB),
        (ModelArtsResponseError,),
        ("json", "body", "response"),
        route=_answer_for(JOB, Answer(200, json.dumps(JOB_BODY)[:25])),
    ),
    "server-200-json-list": Case(
        _get_job(JOB),
        (ModelArtsResponseError,),
        ("object", "dict", "list", "json", "body", "response"),
        route=_answer_for(JOB, Answer(200, "[1, 2]")),
    ),
    "server-200-html": Case(
        _get_job(JOB),
        (ModelArtsResponseError,),
        ("json", "body", "response"),
        route=_answer_for(JOB, Answer(200, "<html>login</html>", "text/html")),
    ),
    "log-url-missing-obs-url": Case(
        _log_url(JOB, "worker-0"),
        (ModelArtsResponseError,),
        ("obs_url",),
        route=_answer_for("/logs/url", Answer(200, json.dumps({"something": "else"}))),
    ),
    "log-url-file-scheme": Case(
        _log_url(JOB, "worker-0"),
        (ModelArtsResponseError,),
        ("obs_url", "scheme", "file"),
        route=_answer_for("/logs/url", Answer(200, json.dumps({"obs_url": "file:///etc/passwd"}))),
    ),
    "log-url-ftp-scheme": Case(
        _log_url(JOB, "worker-0"),
        (ModelArtsResponseError,),
        ("obs_url", "scheme", "ftp"),
        route=_answer_for("/logs/url", Answer(200, json.dumps({"obs_url": "ftp://obs.example.com/b/log"}))),
    ),
    "log-url-relative": Case(
        _log_url(JOB, "worker-0"),
        (ModelArtsResponseError,),
        ("obs_url", "scheme", "absolute", "relative"),
        route=_answer_for("/logs/url", Answer(200, json.dumps({"obs_url": "/bucket/logs/worker-0.log"}))),
    ),
    "log-url-scheme-relative": Case(
        _log_url(JOB, "worker-0"),
        (ModelArtsResponseError,),
        ("obs_url", "scheme", "absolute", "relative"),
        route=_answer_for("/logs/url", Answer(200, json.dumps({"obs_url": "//evil.example.com/log"}))),
    ),
    "log-url-not-string": Case(
        _log_url(JOB, "worker-0"),
        (ModelArtsResponseError,),
        ("obs_url",),
        route=_answer_for("/logs/url", Answer(200, json.dumps({"obs_url": 42}))),
    ),
    "log-url-empty": Case(
        _log_url(JOB, "worker-0"),
        (ModelArtsResponseError,),
        ("obs_url",),
        route=_answer_for("/logs/url", Answer(200, json.dumps({"obs_url": ""}))),
    ),
}


@pytest.fixture
def server():
    with ScriptedServer() as srv:
        yield srv


def _make_hook(monkeypatch: pytest.MonkeyPatch, conn_json: str):
    from airflow_provider_modelarts.hooks.modelarts import ModelArtsHook

    monkeypatch.setenv("AIRFLOW_CONN_MODELARTS_DEFAULT", conn_json)
    return ModelArtsHook(retry_wait=tenacity.wait_none(), max_retries=2, request_timeout=5)


def _assert_typed(exc: BaseException, case: Case, name: str) -> None:
    assert not isinstance(exc, FORBIDDEN), f"{name}: bare {type(exc).__name__}: {exc}"
    assert isinstance(exc, case.errors), f"{name}: {type(exc).__name__} is not one of {case.errors}: {exc}"
    if not isinstance(exc, (ValueError, TypeError)):
        assert isinstance(exc, ModelArtsError), f"{name}: {type(exc).__name__} is not a ModelArtsError"
    message = str(exc).lower()
    assert any(w.lower() in message for w in case.words), (
        f"{name}: message {str(exc)!r} names none of {case.words}"
    )


def _assert_inside_project(server: ScriptedServer) -> None:
    outside = [p for p in server.paths() if not p.startswith(f"/v2/{PROJECT_ID}/")]
    assert not outside, f"requests outside /v2/{PROJECT_ID}/: {outside}"


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_gives_typed_named_error(name: str, server: ScriptedServer, monkeypatch) -> None:
    case = CASES[name]
    server.route = case.route
    hook = _make_hook(monkeypatch, case.conn(server.url))
    with pytest.raises(BaseException) as info:
        case.call(hook)
    _assert_typed(info.value, case, name)
    _assert_inside_project(server)
    if case.errors in (ID_ERRORS, CONF_ERRORS):
        assert server.requests == [], f"{name}: {len(server.requests)} request(s) sent for a bad argument"


def test_there_are_at_least_thirty_cases() -> None:
    assert len(CASES) >= 30


ASYNC_CASES = [
    "job-id-slash",
    "job-id-dotdot",
    "job-id-empty",
    "job-id-none",
    "conn-no-project-id",
    "server-500-not-json",
    "server-502-html",
    "server-200-truncated-json",
    "log-url-missing-obs-url",
    "log-url-file-scheme",
    "log-url-relative",
]


@pytest.mark.parametrize("name", ASYNC_CASES)
def test_bad_input_async_hook(name: str, server: ScriptedServer, monkeypatch) -> None:
    """The triggerer's async hook shares validation and response checks with the sync hook."""
    from airflow_provider_modelarts.hooks.modelarts import ModelArtsAsyncHook

    case = CASES[name]
    server.route = case.route
    monkeypatch.setenv("AIRFLOW_CONN_MODELARTS_DEFAULT", case.conn(server.url))

    class _Proxy:
        def __init__(self, hook: ModelArtsAsyncHook) -> None:
            self.hook = hook

        def get_training_job(self, job_id: Any) -> Any:
            return self.hook.get_training_job(job_id)

        def get_task_log_url(self, job_id: Any, task_id: Any) -> Any:
            return self.hook.get_task_log_url(job_id, task_id)

    async def run() -> None:
        hook = ModelArtsAsyncHook(retry_wait=tenacity.wait_none(), max_retries=2, request_timeout=5)
        try:
            await case.call(_Proxy(hook))
        finally:
            await hook.close()

    with pytest.raises(BaseException) as info:
        asyncio.run(run())
    _assert_typed(info.value, case, name)
    _assert_inside_project(server)


# --- operator arguments, against the emulator (its counters prove where requests went) -----------------

OPERATOR_CASES: dict[str, tuple[dict[str, Any], tuple[str, ...]]] = {
    "destination-unknown-scheme": ({"destination": "gopher://host/archive"}, ("gopher", "scheme")),
    "destination-relative-path": ({"destination": "archive/logs"}, ("relative",)),
    "destination-empty": ({"destination": "  "}, ("destination",)),
    "task-ids-missing-task": ({"task_ids": ["worker-9"]}, ("worker-9",)),
    "task-ids-not-a-list": ({"task_ids": 7}, ("task_ids",)),
    "path-template-traversal": ({"path_template": "../{task_id}.log"}, ("path_template", "..")),
    "compression-unknown": ({"compression": "zip"}, ("compression",)),
}


@pytest.mark.parametrize("name", list(OPERATOR_CASES))
def test_archive_operator_bad_arguments(name, emulator_factory, monkeypatch, tmp_path):
    from unittest import mock

    from airflow_provider_modelarts.operators.modelarts import ModelArtsArchiveTaskLogsOperator

    emu = emulator_factory(
        {
            "jobs": [
                {
                    "id": "job-two",
                    "timeline": [{"phase": "Completed", "at": 0}],
                    "tasks": [
                        {"id": "worker-0", "log": {"text": "a\n"}},
                        {"id": "worker-1", "log": {"text": "b\n"}},
                    ],
                }
            ]
        }
    )
    monkeypatch.setenv("AIRFLOW_CONN_MODELARTS_DEFAULT", emu.connection_json())
    overrides, words = OPERATOR_CASES[name]
    kwargs: dict[str, Any] = {"training_job_id": "job-two", "destination": tmp_path.as_uri(), **overrides}
    emu.reset_counters()
    with pytest.raises(BaseException) as info:
        op = ModelArtsArchiveTaskLogsOperator(task_id="archive", **kwargs)
        op.execute({"ti": mock.MagicMock(), "task": op, "run_id": "r", "dag_run": mock.MagicMock()})
    exc = info.value
    assert not isinstance(exc, FORBIDDEN), f"{name}: bare {type(exc).__name__}: {exc}"
    assert isinstance(exc, (ModelArtsError, ValueError, TypeError)), f"{name}: {type(exc).__name__}: {exc}"
    assert any(w.lower() in str(exc).lower() for w in words), f"{name}: {exc}"
    assert emu.counters["outside_project"] == 0
    if name == "task-ids-missing-task":
        assert "worker-0" in str(exc) and "worker-1" in str(exc), (
            f"the error should list the job's tasks: {exc}"
        )
    else:
        # Checked in execute() before any request: not even the job is fetched.
        assert emu.counters["job"] == 0 and emu.counters["obs_get"] == 0, dict(emu.counters)
    assert not any(p.name.endswith(".log") for p in tmp_path.rglob("*")), "a log was archived anyway"
