"""SmnNotifier over real HTTP against the emulator: alone, wrapped by ModelArtsTaskLogsNotifier, async, token auth."""

from __future__ import annotations

import asyncio
import json

import pytest
from airflow.providers.common.compat.sdk import BaseNotifier

from airflow_provider_modelarts.auth import TOKEN_CACHE
from airflow_provider_modelarts.exceptions import ModelArtsNotFoundError
from airflow_provider_modelarts.notifications.modelarts import ModelArtsTaskLogsNotifier
from airflow_provider_modelarts.notifications.smn import SmnNotifier

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def _clean_tokens():
    TOKEN_CACHE.clear()
    yield
    TOKEN_CACHE.clear()


def _topic(emu, name="modelarts-alerts"):
    return f"urn:smn:{emu.region}:{emu.project_id}:{name}"


def test_alone_as_a_callback(modelarts_conn):
    emu = modelarts_conn
    SmnNotifier(topic_urn=_topic(emu), subject="{{ dag_id }} failed", message="run {{ run_id }} failed")(
        {"dag_id": "d1", "run_id": "r1"}
    )
    [message] = emu.smn.messages()
    assert (message["subject"], message["message"]) == ("d1 failed", "run r1 failed")
    assert emu.counters["smn_publish"] == 1


def test_wrapped_by_the_task_logs_notifier(modelarts_conn):
    emu = modelarts_conn
    smn = SmnNotifier(
        topic_urn=_topic(emu),
        subject="Training job {{ modelarts.training_job_id }} {{ modelarts.phase }}",
        message_structure={
            "default": "{{ modelarts.summary }}",
            "sms": "{{ modelarts.training_job_id }} {{ modelarts.phase }}",
        },
    )
    ModelArtsTaskLogsNotifier(training_job_id="job-failed", notifier=smn, tail_lines=3)({})
    [message] = emu.smn.messages()
    assert message["subject"] == "Training job job-failed Failed"
    default = message["message_structure"]["default"]
    assert "CUDA out of memory" in default
    assert emu.url in default  # the fresh log link
    assert message["sms"] == {"parts": 1, "delivered": "job-failed Failed", "truncated": False}


def test_long_digest_is_cut_and_accepted(modelarts_conn):
    emu = modelarts_conn
    huge = "".join(f"step {i}: loss nan ü\n" for i in range(30_000))
    SmnNotifier(
        topic_urn=_topic(emu),
        subject="é" * 600,
        message_structure={"default": huge, "sms": "中" * 500},
    )({})
    [message] = emu.smn.messages()
    assert len(message["subject"].encode("utf-8")) <= 512
    assert "bytes cut" in message["message_structure"]["default"]
    assert message["sms"]["truncated"] is False


def test_retries_server_errors_from_smn(modelarts_conn, monkeypatch):
    import tenacity

    from airflow_provider_modelarts.hooks.modelarts import ModelArtsHook

    emu = modelarts_conn
    emu.knobs.error_burst = 2
    monkeypatch.setattr(
        SmnNotifier,
        "get_hook",
        lambda self: ModelArtsHook(self.modelarts_conn_id, retry_wait=tenacity.wait_none()),
    )
    SmnNotifier(topic_urn=_topic(emu), message="m")({})
    assert len(emu.smn.messages()) == 1
    assert emu.counters["smn_publish"] == 3


def test_unknown_topic_is_a_typed_error(modelarts_conn):
    emu = modelarts_conn
    with pytest.raises(ModelArtsNotFoundError) as info:
        SmnNotifier(topic_urn=f"urn:smn:{emu.region}:ffffffffffff:t", message="m")({})
    assert info.value.error_code == "SMN.0006"
    assert info.value.request_id


def test_token_auth(emulator, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_MODELARTS_DEFAULT", emulator.connection_json(auth_type="token"))
    SmnNotifier(topic_urn=_topic(emulator), message="token auth")({})
    assert [m["message"] for m in emulator.smn.messages()] == ["token auth"]


@pytest.mark.skipif(not hasattr(BaseNotifier, "__await__"), reason="async notifiers need Airflow >= 3.1")
def test_async_path(modelarts_conn):
    emu = modelarts_conn
    notifier = SmnNotifier(topic_urn=_topic(emu), subject="async", message="{{ what }}")
    notifier.context = {"what": "from the triggerer"}  # type: ignore[assignment]

    async def run() -> None:
        await notifier

    asyncio.run(run())
    [message] = emu.smn.messages()
    assert (message["subject"], message["message"]) == ("async", "from the triggerer")


def test_message_list_endpoint_is_json(modelarts_conn):
    import requests

    emu = modelarts_conn
    SmnNotifier(topic_urn=_topic(emu), message="listed")({})
    doc = requests.get(f"{emu.url}/_emulator/smn/messages", timeout=10).json()
    assert json.dumps(doc) and doc["messages"][0]["message"] == "listed"


def test_concurrent_alerts_are_all_kept(modelarts_conn):
    from concurrent.futures import ThreadPoolExecutor

    emu = modelarts_conn

    def send(i: int) -> None:
        SmnNotifier(topic_urn=_topic(emu), subject=f"alert {i}", message=f"body {i}")({})

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(send, range(16)))
    messages = emu.smn.messages()
    assert sorted(m["subject"] for m in messages) == sorted(f"alert {i}" for i in range(16))
    assert len({m["message_id"] for m in messages}) == 16


def test_smn_that_never_answers_times_out_with_a_typed_error(emulator, monkeypatch):
    import socket
    import threading

    from airflow_provider_modelarts.exceptions import ModelArtsTransportError

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])  # read nothing, answer nothing
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    conn = json.loads(emulator.connection_json())
    conn["extra"].update(
        smn_endpoint=f"http://127.0.0.1:{listener.getsockname()[1]}", timeout=0.5, max_retries=1
    )
    monkeypatch.setenv("AIRFLOW_CONN_MODELARTS_DEFAULT", json.dumps(conn))
    try:
        with pytest.raises(ModelArtsTransportError) as info:
            SmnNotifier(topic_urn=_topic(emulator), message="m")({})
    finally:
        stop.set()
        thread.join(5)
        for sock in accepted:
            sock.close()
        listener.close()
    assert "SMN did not answer the publish" in str(info.value)
    assert len(accepted) == 2  # the first attempt and one retry
    assert emulator.sk not in str(info.value)
