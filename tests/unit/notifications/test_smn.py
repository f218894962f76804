from __future__ import annotations

import asyncio
import json
import logging

import httpx
import pytest
import requests_mock as rm
import tenacity
from airflow.providers.common.compat.sdk import BaseNotifier

from airflow_provider_modelarts.auth import TOKEN_CACHE
from airflow_provider_modelarts.exceptions import (
    ModelArtsApiError,
    ModelArtsAuthError,
    ModelArtsConfigError,
    ModelArtsNotFoundError,
    ModelArtsResponseError,
    ModelArtsValidationError,
)
from airflow_provider_modelarts.hooks.modelarts import ModelArtsAsyncHook, ModelArtsHook
from airflow_provider_modelarts.hooks.smn import publish_url, validate_topic_urn
from airflow_provider_modelarts.notifications import smn as smn_module
from airflow_provider_modelarts.notifications.modelarts import ModelArtsTaskLogsNotifier
from airflow_provider_modelarts.notifications.smn import (
    MESSAGE_LIMIT_BYTES,
    SUBJECT_LIMIT_BYTES,
    SmnNotifier,
    build_publish_body,
    fit_message,
    fit_sms,
    fit_subject,
)
from tests.fixtures.fake_hooks import fake_hook

AK = "HPUAEXAMPLEAK0000001"
SK = "ExampleSecretKey0000000000000000000000000"
PID = "0123456789abcdef0123456789abcdef"
REGION = "cn-north-4"
TOPIC = f"urn:smn:{REGION}:{PID}:modelarts-alerts"
SMN = f"https://smn.{REGION}.myhuaweicloud.com"
PUBLISH = f"{SMN}/v2/{PID}/notifications/topics/{TOPIC}/publish"
OK = {"request_id": "req-1", "message_id": "msg-1"}


@pytest.fixture(autouse=True)
def _conn(monkeypatch):
    TOKEN_CACHE.clear()
    conn = {
        "conn_type": "modelarts",
        "login": AK,
        "password": SK,
        "extra": {"project_id": PID, "region": REGION, "max_retries": 2},
    }
    monkeypatch.setenv("AIRFLOW_CONN_MODELARTS_DEFAULT", json.dumps(conn))
    # Zero-wait retries: the notifier's hooks are the real ones with a test wait policy.
    monkeypatch.setattr(
        SmnNotifier,
        "get_hook",
        lambda self: ModelArtsHook(self.modelarts_conn_id, retry_wait=tenacity.wait_none()),
    )
    yield
    TOKEN_CACHE.clear()


def _sent(mocker: rm.Mocker) -> dict:
    return json.loads(mocker.last_request.body.decode("utf-8"))


# ----------------------------------------------------------------------------- contract


def test_template_fields_are_attributes():
    notifier = SmnNotifier(topic_urn=TOPIC, message="m")
    for name in notifier.template_fields:
        assert hasattr(notifier, name)
    assert {"topic_urn", "subject", "message", "message_structure"} <= set(notifier.template_fields)


def test_arguments_are_keyword_only():
    with pytest.raises(TypeError):
        SmnNotifier(TOPIC, "subject", "message")  # type: ignore[misc]


# ----------------------------------------------------------------------------- body shapes


def test_plain_message_body_is_signed_and_sent(caplog, capsys):
    caplog.set_level(logging.INFO)
    with rm.Mocker() as m:
        m.post(PUBLISH, json=OK)
        SmnNotifier(topic_urn=TOPIC, subject="Job {{ job }} failed", message="phase {{ phase }}")(
            {"job": "j-1", "phase": "Failed"}
        )
    assert _sent(m) == {"subject": "Job j-1 failed", "message": "phase Failed"}
    request = m.last_request
    assert request.headers["Authorization"].startswith(f"SDK-HMAC-SHA256 Access={AK}, SignedHeaders=")
    assert request.headers["X-Project-Id"] == PID
    assert request.headers["Content-Type"].startswith("application/json")
    logged = capsys.readouterr().out + caplog.text
    assert "message_id msg-1" in logged
    assert SK not in logged


def test_message_structure_is_sent_as_a_json_string():
    structure = {"default": "job {{ job }}", "email": "<b>{{ job }}</b>", "sms": "{{ job }} failed"}
    with rm.Mocker() as m:
        m.post(PUBLISH, json=OK)
        SmnNotifier(topic_urn=TOPIC, subject="s", message_structure=structure)({"job": "j-2"})
    body = _sent(m)
    assert set(body) == {"subject", "message_structure"}
    assert isinstance(body["message_structure"], str)
    assert json.loads(body["message_structure"]) == {
        "default": "job j-2",
        "email": "<b>j-2</b>",
        "sms": "j-2 failed",
    }


@pytest.mark.parametrize("subject", [None, "", "  \n "])
def test_empty_subject_is_left_out(subject):
    with rm.Mocker() as m:
        m.post(PUBLISH, json=OK)
        SmnNotifier(topic_urn=TOPIC, subject=subject, message="m")({})
    assert _sent(m) == {"message": "m"}


def test_smn_endpoint_extra_overrides_the_region_endpoint(monkeypatch):
    conn = {
        "conn_type": "modelarts",
        "login": AK,
        "password": SK,
        "extra": {"project_id": PID, "region": REGION, "smn_endpoint": "http://127.0.0.1:9999"},
    }
    monkeypatch.setenv("AIRFLOW_CONN_MODELARTS_DEFAULT", json.dumps(conn))
    with rm.Mocker() as m:
        m.post(f"http://127.0.0.1:9999/v2/{PID}/notifications/topics/{TOPIC}/publish", json=OK)
        SmnNotifier(topic_urn=TOPIC, message="m")({})
    assert m.call_count == 1


def test_token_auth_sends_the_iam_token(monkeypatch):
    iam = "http://127.0.0.1:18081"
    conn = {
        "conn_type": "modelarts",
        "login": "iam-user",
        "password": "iam-password-123",
        "extra": {"project_id": PID, "region": REGION, "auth_type": "token", "iam_endpoint": iam},
    }
    monkeypatch.setenv("AIRFLOW_CONN_MODELARTS_DEFAULT", json.dumps(conn))
    with rm.Mocker() as m:
        m.post(
            f"{iam}/v3/auth/tokens",
            status_code=201,
            headers={"X-Subject-Token": "tok-123"},
            json={"token": {"expires_at": "2999-01-01T00:00:00.000000Z"}},
        )
        m.post(PUBLISH, json=OK)
        SmnNotifier(topic_urn=TOPIC, message="m")({})
    assert m.last_request.headers["X-Auth-Token"] == "tok-123"


# ----------------------------------------------------------------------------- limits and cutting


def test_subject_is_cut_on_a_utf8_boundary_with_a_marker():
    subject = "é" * 400  # 800 bytes
    cut = fit_subject(subject)
    assert len(cut.encode("utf-8")) <= SUBJECT_LIMIT_BYTES
    assert cut.endswith("...")
    assert cut[:-3] == "é" * len(cut[:-3])
    assert fit_subject("short") == "short"
    assert fit_subject("a" * SUBJECT_LIMIT_BYTES) == "a" * SUBJECT_LIMIT_BYTES


def test_subject_becomes_one_line():
    assert (
        fit_subject("Job x\r\nBcc: someone@example.com\n  failed") == "Job x Bcc: someone@example.com failed"
    )


def test_long_message_keeps_start_and_end_and_says_where_the_full_log_is():
    text = "HEADER job-1 Failed\n" + "".join(f"line {i} ü\n" for i in range(40_000)) + "LAST ERROR\n"
    assert len(text.encode("utf-8")) > MESSAGE_LIMIT_BYTES
    cut = fit_message(text, where="the ModelArts console https://console.example/job-1")
    data = cut.encode("utf-8")
    assert len(data) <= MESSAGE_LIMIT_BYTES
    assert cut.startswith("HEADER job-1 Failed")
    assert cut.endswith("LAST ERROR\n")
    assert "full log: the ModelArts console https://console.example/job-1" in cut
    left_out = int(cut.split("[... ")[1].split(" bytes cut")[0])
    # The kept parts are exact pieces of the original: nothing rewritten, no broken characters.
    head, _, rest = cut.partition("\n[... ")
    tail = rest.split(" ...]\n", 1)[1]
    assert text.startswith(head) and text.endswith(tail)
    assert left_out == len(text.encode("utf-8")) - len(head.encode("utf-8")) - len(tail.encode("utf-8"))


def test_message_at_the_limit_is_not_cut():
    text = "x" * MESSAGE_LIMIT_BYTES
    assert fit_message(text, where="w") == text


@pytest.mark.parametrize(
    ("text", "limit"),
    [("a" * 2000, 918), ("a" * 918, 918), ("中" * 1000, 402), ("a" * 500 + "é", 402)],
)
def test_sms_fits_in_the_two_parts_smn_sends(text, limit):
    cut = fit_sms(text)
    assert len(cut) <= limit
    if len(text) > limit:
        assert cut.endswith("...")
    else:
        assert cut == text


def test_structure_entries_are_cut_and_the_whole_json_fits():
    long = "".join(f'line {i} "quoted"\n' for i in range(30_000))
    body = build_publish_body(
        subject="s",
        message_structure={"default": long, "email": long, "sms": "x" * 5000},
        where="the Airflow task log",
    )
    encoded = body["message_structure"]
    assert len(encoded.encode("utf-8")) <= MESSAGE_LIMIT_BYTES
    entries = json.loads(encoded)
    assert len(entries["sms"]) <= 918
    assert "bytes cut" in entries["default"] and "bytes cut" in entries["email"]


def test_a_too_long_message_is_cut_before_sending():
    with rm.Mocker() as m:
        m.post(PUBLISH, json=OK)
        SmnNotifier(topic_urn=TOPIC, subject="s" * 600, message="y" * (MESSAGE_LIMIT_BYTES + 10))({})
    body = _sent(m)
    assert len(body["subject"].encode("utf-8")) <= SUBJECT_LIMIT_BYTES
    assert len(body["message"].encode("utf-8")) <= MESSAGE_LIMIT_BYTES
    assert "the Airflow task log" in body["message"]


def test_cut_note_names_the_console_and_the_task_log():
    class Ti:
        log_url = "http://airflow.example/dags/d/runs/r/tasks/t"

    class BrokenTi:
        @property
        def log_url(self):
            raise RuntimeError("no api server configured")

    context = {"modelarts": {"console_url": "https://console.example/job-9"}, "ti": Ti()}
    assert smn_module.full_log_location(context) == (
        "the ModelArts console https://console.example/job-9 or "
        "the Airflow task log http://airflow.example/dags/d/runs/r/tasks/t"
    )
    assert smn_module.full_log_location({"ti": BrokenTi()}) == "the Airflow task log"
    assert smn_module.full_log_location({}) == "the Airflow task log"


# ----------------------------------------------------------------------------- validation before requests


@pytest.mark.parametrize(
    "urn",
    [
        "arn:aws:sns:us-east-1:1:x",
        f"urn:smn:{REGION}:{PID}:",
        f"urn:smn:{REGION}:{PID}:-starts-with-dash",
        f"urn:smn:{REGION}:{PID}:a/../../x",
        f"urn:smn:{REGION}:{PID}:a b",
        f"urn:smn:{REGION}:{PID}:" + "a" * 256,
        f"urn:smn:{REGION}:{PID}:name?x=1",
        123,
        None,
    ],
)
def test_bad_topic_urn_is_rejected_before_any_request(urn):
    with rm.Mocker() as m, pytest.raises(ModelArtsValidationError):
        SmnNotifier(topic_urn=urn, message="m")({})
    assert m.call_count == 0


def test_valid_topic_urn_parts():
    assert validate_topic_urn(TOPIC) == {"region": REGION, "project_id": PID, "name": "modelarts-alerts"}


def test_topic_of_another_region_is_rejected_before_any_request():
    with rm.Mocker() as m, pytest.raises(ModelArtsValidationError, match="region 'eu-west-101'"):
        SmnNotifier(topic_urn=f"urn:smn:eu-west-101:{PID}:t", message="m")({})
    assert m.call_count == 0


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"message": "m", "message_structure": {"default": "d"}},
        {"message": 5},
        {"message": "   "},
        {"message": "m", "subject": 7},
        {"message_structure": "not a dict"},
        {"message_structure": {"email": "no default"}},
        {"message_structure": {"default": ""}},
        {"message_structure": {"default": "d", "pigeon": "x"}},
        {"message_structure": {"default": "d", "sms": 12}},
    ],
)
def test_bad_arguments_are_rejected_before_any_request(kwargs):
    with rm.Mocker() as m, pytest.raises(ModelArtsValidationError):
        SmnNotifier(topic_urn=TOPIC, **kwargs)({})
    assert m.call_count == 0


def test_missing_region_and_smn_endpoint_is_a_config_error(monkeypatch):
    conn = {
        "conn_type": "modelarts",
        "login": AK,
        "password": SK,
        "extra": {"project_id": PID, "endpoint": "http://127.0.0.1:1"},
    }
    monkeypatch.setenv("AIRFLOW_CONN_MODELARTS_DEFAULT", json.dumps(conn))
    with rm.Mocker() as m, pytest.raises(ModelArtsConfigError, match="smn_endpoint"):
        SmnNotifier(topic_urn=TOPIC, message="m")({})
    assert m.call_count == 0


def test_bad_smn_endpoint_extra_is_a_config_error():
    from airflow_provider_modelarts.connection import ModelArtsConnectionConfig

    with pytest.raises(ModelArtsConfigError, match="smn_endpoint"):
        ModelArtsConnectionConfig.from_fields(
            login=AK, password=SK, extra={"project_id": PID, "region": REGION, "smn_endpoint": "ftp://x/y"}
        )
    config = ModelArtsConnectionConfig.from_fields(
        login=AK, password=SK, extra={"project_id": PID, "region": REGION}
    )
    assert publish_url(config, TOPIC) == PUBLISH


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("status", "code", "message", "error_type"),
    [
        (404, "SMN.0006", "Topic not found.", ModelArtsNotFoundError),
        (400, "SMN.0005", "Parameter: TopicUrn is invalid.", ModelArtsApiError),
        (403, "SMN.0010", "No permission: smn:topic:publish", ModelArtsAuthError),
    ],
)
def test_smn_errors_become_typed_errors_with_their_fields(status, code, message, error_type):
    with rm.Mocker() as m:
        m.post(
            PUBLISH,
            status_code=status,
            json={"request_id": "req-err", "code": code, "message": message},
        )
        with pytest.raises(error_type) as info:
            SmnNotifier(topic_urn=TOPIC, message="m")({})
    err = info.value
    assert (err.status_code, err.error_code, err.error_msg, err.request_id) == (
        status,
        code,
        message,
        "req-err",
    )
    assert "SMN" in str(err) and TOPIC in str(err) and code in str(err)
    assert m.call_count == 1  # 4xx is never retried


def test_throttling_and_5xx_are_retried_then_succeed():
    with rm.Mocker() as m:
        m.post(
            PUBLISH,
            [
                {"status_code": 429, "json": {"error_code": "APIG.0308", "error_msg": "throttled"}},
                {"status_code": 503, "json": {"code": "SMN.0019", "message": "busy"}},
                {"status_code": 200, "json": OK},
            ],
        )
        SmnNotifier(topic_urn=TOPIC, message="m")({})
    assert m.call_count == 3


def test_retries_run_out_with_the_last_error():
    with rm.Mocker() as m:
        m.post(PUBLISH, status_code=500, json={"code": "SMN.0019", "message": "Producer Exceptions."})
        with pytest.raises(ModelArtsApiError) as info:
            SmnNotifier(topic_urn=TOPIC, message="m")({})
    assert m.call_count == 3  # max_retries 2 in the connection
    assert info.value.error_code == "SMN.0019"


def test_answer_without_message_id_is_a_response_error():
    with rm.Mocker() as m:
        m.post(PUBLISH, json={"request_id": "r"})
        with pytest.raises(ModelArtsResponseError, match="message_id"):
            SmnNotifier(topic_urn=TOPIC, message="m")({})


def test_secrets_never_reach_errors_or_logs(caplog, capsys):
    caplog.set_level(logging.DEBUG)
    with rm.Mocker() as m:
        m.post(
            PUBLISH,
            status_code=401,
            json={"error_code": "APIG.0301", "error_msg": "verify aksk signature fail"},
        )
        with pytest.raises(ModelArtsAuthError) as info:
            SmnNotifier(topic_urn=TOPIC, message="m")({})
    chain = []
    err: BaseException | None = info.value
    while err is not None:
        chain.append(repr(err) + str(err))
        err = err.__cause__ or err.__context__
    text = "\n".join(chain) + caplog.text + capsys.readouterr().out
    assert "APIG.0301" in text  # the failure itself is reported
    assert SK not in text
    assert m.last_request.headers["Authorization"].split("Signature=")[1] not in text


# ----------------------------------------------------------------------------- wrapped and async


class _ModelArtsAnswers:
    """What the (autospecced) ModelArts hook answers."""

    def console_url(self, job_id):
        return f"https://console.example/{job_id}"

    def get_training_job(self, job_id):
        return {"status": {"phase": "Failed", "tasks": ["worker-0"], "task_statuses": []}}

    def get_task_log_url(self, job_id, task_id, download=False):
        return f"http://obs.local/{job_id}/{task_id}.log?Expires=1893456300&Signature=SIGX"

    @staticmethod
    def log_url_expires_at(url, *, default_ttl=300):
        from datetime import datetime, timezone

        return datetime(2030, 1, 1, tzinfo=timezone.utc)

    def preview_task_log(self, job_id, task_id):
        return {"content": "a\nb\nTraceback: boom\n"}


def test_wrapped_templates_see_summary_and_log_urls(monkeypatch):
    monkeypatch.setattr(ModelArtsTaskLogsNotifier, "_hook", lambda self: fake_hook(_ModelArtsAnswers()))
    smn = SmnNotifier(
        topic_urn=TOPIC,
        subject="{{ modelarts.training_job_id }} is {{ modelarts.phase }}",
        message_structure={
            "default": "{{ modelarts.summary }}",
            "sms": "{{ modelarts.training_job_id }} {{ modelarts.phase }}: "
            "{{ modelarts.log_tails['worker-0'].splitlines()[-1] }}",
            "https": "{{ modelarts.log_urls['worker-0'].url }}",
        },
    )
    with rm.Mocker() as m:
        m.post(PUBLISH, json=OK)
        ModelArtsTaskLogsNotifier(training_job_id="job-7", notifier=smn, tail_lines=5)({})
    body = _sent(m)
    entries = json.loads(body["message_structure"])
    assert body["subject"] == "job-7 is Failed"
    assert "ModelArts training job job-7: phase Failed" in entries["default"]
    assert "Traceback: boom" in entries["default"]
    assert entries["sms"] == "job-7 Failed: Traceback: boom"
    assert entries["https"].startswith("http://obs.local/job-7/worker-0.log")


def test_dag_callback_context_with_a_serialized_dag_renders():
    from airflow.sdk import DAG

    try:
        from airflow.serialization.serialized_objects import DagSerialization
    except ImportError:  # Airflow < 3.2
        from airflow.serialization.serialized_objects import SerializedDAG as DagSerialization

    with DAG(dag_id="smn_dag", schedule=None) as dag:
        pass
    serialized = DagSerialization.from_dict(DagSerialization.to_dict(dag))
    with rm.Mocker() as m:
        m.post(PUBLISH, json=OK)
        SmnNotifier(topic_urn=TOPIC, subject="{{ dag.dag_id }} failed", message="m")({"dag": serialized})
    assert _sent(m)["subject"] == "smn_dag failed"


@pytest.mark.skipif(not hasattr(BaseNotifier, "__await__"), reason="async notifiers need Airflow >= 3.1")
def test_async_notify_publishes_over_the_async_hook(monkeypatch):
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if len(seen) == 1:
            return httpx.Response(503, json={"code": "SMN.0019", "message": "busy"})
        return httpx.Response(200, json=OK)

    monkeypatch.setattr(
        SmnNotifier,
        "get_async_hook",
        lambda self: ModelArtsAsyncHook(
            self.modelarts_conn_id, retry_wait=tenacity.wait_none(), transport=httpx.MockTransport(handler)
        ),
    )
    notifier = SmnNotifier(topic_urn=TOPIC, subject="{{ job }}", message="async {{ job }}")
    notifier.context = {"job": "j-async"}  # type: ignore[assignment]

    async def run() -> None:
        await notifier

    asyncio.run(run())
    assert len(seen) == 2
    assert str(seen[-1].url) == PUBLISH
    assert json.loads(seen[-1].content) == {"subject": "j-async", "message": "async j-async"}
    assert seen[-1].headers["Authorization"].startswith("SDK-HMAC-SHA256 ")


@pytest.mark.skipif(not hasattr(BaseNotifier, "__await__"), reason="async notifiers need Airflow >= 3.1")
def test_async_notify_raises_typed_smn_errors(monkeypatch):
    monkeypatch.setattr(
        SmnNotifier,
        "get_async_hook",
        lambda self: ModelArtsAsyncHook(
            self.modelarts_conn_id,
            transport=httpx.MockTransport(
                lambda r: httpx.Response(
                    404, json={"request_id": "r9", "code": "SMN.0006", "message": "Topic not found."}
                )
            ),
        ),
    )
    notifier = SmnNotifier(topic_urn=TOPIC, message="m")
    with pytest.raises(ModelArtsNotFoundError) as info:
        asyncio.run(notifier.async_notify({}))  # type: ignore[arg-type]
    assert info.value.error_code == "SMN.0006" and info.value.request_id == "r9"
