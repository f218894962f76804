from __future__ import annotations

import sys
import time
import types
from unittest import mock

import pytest

from airflow_provider_modelarts.links import modelarts as links_module
from airflow_provider_modelarts.links.modelarts import (
    LOG_PREVIEW_LINK_TIMEOUT,
    TRAINING_JOB_XCOM_KEY,
    ModelArtsTaskLogPreviewLink,
    ModelArtsTrainingJobConsoleLink,
    persist_training_job_links,
)

TI_KEY = mock.sentinel.ti_key
STORED = {
    "training_job_id": "job-1",
    "console_url": "https://console.example/job-1",
    "modelarts_conn_id": "my_conn",
    "task_ids": [],
}


@pytest.fixture
def stored(monkeypatch):
    values = {}

    def get_value(*, key, ti_key):
        assert ti_key is TI_KEY
        return values.get(key)

    monkeypatch.setattr(links_module.XCom, "get_value", staticmethod(get_value))
    return values


@pytest.fixture
def fake_hook_module(monkeypatch):
    created = []

    class FakeHook:
        behaviour = "ok"

        def __init__(self, conn_id, **kwargs):
            created.append((conn_id, kwargs))

        def get_training_job(self, training_job_id):
            return {"status": {"phase": "Running", "tasks": ["worker-0", "worker-1"]}}

        def get_task_log_url(self, training_job_id, task_id, download=False):
            if FakeHook.behaviour == "fail":
                raise TimeoutError("read timed out")
            return f"http://obs.local/{training_job_id}/{task_id}?download={download}&Signature=x"

    module = types.SimpleNamespace(ModelArtsHook=FakeHook)
    monkeypatch.setitem(sys.modules, "airflow_provider_modelarts.hooks.modelarts", module)
    return FakeHook, created


def test_persist_pushes_job_and_conn_id():
    ti = mock.MagicMock()
    task = types.SimpleNamespace(modelarts_conn_id="from_task")
    persist_training_job_links(
        {"ti": ti, "task": task}, training_job_id="job-1", console_url="https://console.example/job-1"
    )
    ti.xcom_push.assert_called_once_with(
        key=TRAINING_JOB_XCOM_KEY,
        value={
            "training_job_id": "job-1",
            "console_url": "https://console.example/job-1",
            "modelarts_conn_id": "from_task",
            "task_ids": [],
        },
    )


def test_console_link(stored):
    link = ModelArtsTrainingJobConsoleLink()
    assert link.get_link(None, ti_key=TI_KEY) == ""
    stored[TRAINING_JOB_XCOM_KEY] = STORED
    assert link.get_link(None, ti_key=TI_KEY) == "https://console.example/job-1"


def test_console_link_never_raises(monkeypatch):
    monkeypatch.setattr(links_module, "_stored_job", mock.Mock(side_effect=RuntimeError("db down")))
    assert ModelArtsTrainingJobConsoleLink().get_link(None, ti_key=TI_KEY) == ""


def test_preview_link_mints_a_fresh_link_with_one_short_attempt(stored, fake_hook_module):
    _, created = fake_hook_module
    stored[TRAINING_JOB_XCOM_KEY] = STORED
    url = ModelArtsTaskLogPreviewLink().get_link(None, ti_key=TI_KEY)
    assert url == "http://obs.local/job-1/worker-0?download=False&Signature=x"
    assert created == [("my_conn", {"max_retries": 0, "request_timeout": LOG_PREVIEW_LINK_TIMEOUT})]
    assert LOG_PREVIEW_LINK_TIMEOUT <= 5


def test_preview_link_uses_stored_task_ids(stored, fake_hook_module):
    stored[TRAINING_JOB_XCOM_KEY] = {**STORED, "task_ids": ["worker-3"]}
    assert "/worker-3?" in ModelArtsTaskLogPreviewLink().get_link(None, ti_key=TI_KEY)


def test_preview_link_falls_back_to_console_on_failure(stored, fake_hook_module):
    hook_cls, _ = fake_hook_module
    hook_cls.behaviour = "fail"
    stored[TRAINING_JOB_XCOM_KEY] = STORED
    started = time.monotonic()
    assert ModelArtsTaskLogPreviewLink().get_link(None, ti_key=TI_KEY) == "https://console.example/job-1"
    assert time.monotonic() - started < 1


def test_preview_link_without_stored_job(stored, fake_hook_module):
    assert ModelArtsTaskLogPreviewLink().get_link(None, ti_key=TI_KEY) == ""


def test_stored_job_reads_the_db_outside_a_task(monkeypatch):
    monkeypatch.setattr(links_module.XCom, "get_value", mock.Mock(side_effect=RuntimeError("no supervisor")))
    monkeypatch.setattr(links_module, "_read_xcom_from_db", lambda ti_key: STORED)
    assert ModelArtsTrainingJobConsoleLink().get_link(None, ti_key=TI_KEY) == STORED["console_url"]


class _LiveOperator:
    """The operator object the worker passes to ``get_link`` at task end (it declares the attribute)."""

    modelarts_link_data = None
    modelarts_conn_id = "my_conn"


@pytest.mark.parametrize("link_class", [ModelArtsTrainingJobConsoleLink, ModelArtsTaskLogPreviewLink])
def test_link_of_a_task_that_stored_nothing_is_empty_without_reading_xcom(monkeypatch, link_class):
    """A task that failed before reading the job must not make the supervisor log 'XCom not found'."""
    read = mock.Mock(side_effect=AssertionError("XCom read"))
    monkeypatch.setattr(links_module.XCom, "get_value", read)
    monkeypatch.setattr(links_module, "_read_xcom_from_db", read)
    assert link_class().get_link(_LiveOperator(), ti_key=TI_KEY) == ""
    read.assert_not_called()


def test_link_of_a_task_that_stored_its_job_comes_from_the_operator(monkeypatch):
    read = mock.Mock(side_effect=AssertionError("XCom read"))
    monkeypatch.setattr(links_module.XCom, "get_value", read)
    operator, ti = _LiveOperator(), mock.MagicMock()
    persist_training_job_links(
        {"ti": ti, "task": operator}, training_job_id="job-1", console_url="https://console.example/job-1"
    )
    assert (
        ModelArtsTrainingJobConsoleLink().get_link(operator, ti_key=TI_KEY) == "https://console.example/job-1"
    )
    ti.xcom_push.assert_called_once()  # the API server still finds it in XCom
    read.assert_not_called()


def test_endpoint_only_connection_stores_no_console_link():
    operator, ti = _LiveOperator(), mock.MagicMock()
    persist_training_job_links({"ti": ti, "task": operator}, training_job_id="job-1", console_url="")
    assert ModelArtsTrainingJobConsoleLink().get_link(operator, ti_key=TI_KEY) == ""
