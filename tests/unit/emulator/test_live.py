"""Emulated logs that grow line by line, job events, end reasons and the /logs/url refusal knob."""

from __future__ import annotations

import math
import time

import pytest
import requests

from airflow_provider_modelarts.emulator.live import PacedLog
from airflow_provider_modelarts.exceptions import ModelArtsAuthError, ModelArtsValidationError
from airflow_provider_modelarts.hooks.modelarts import ModelArtsHook


def test_paced_log_grows_line_by_line_with_partial_lines():
    log = PacedLog(count=5, every=1.0, template="l{n}", progress=True, invalid_utf8=True)
    assert log.size_after(0) == 0
    assert log.read(0, log.size_after(1.0)) == b"l1\n"
    middle = log.size_after(1.5)
    assert 3 < middle < 6 and log.read(0, middle).startswith(b"l1\nl")
    assert log.size_after(100) == log.size == len(log.read(0, log.size))
    assert log.line_count_at(log.size) == 5
    big = PacedLog(count=25, every=0.1, template="x{n}", progress=True, invalid_utf8=True)
    data = big.read(0, big.size)
    assert b"progress 0%\rprogress 50%\rprogress 100% x10\n" in data
    assert b"x25 bad-bytes:\xff\xfe\n" in data
    with pytest.raises(ValueError):
        PacedLog(count=1, every=0)


@pytest.fixture
def live_emu(emulator_factory, monkeypatch):
    emu = emulator_factory({"jobs": []})
    emu.add_job(
        {
            "id": "j",
            "timeline": [{"phase": "Running", "at": 0}, {"phase": "Failed", "at": 10}],
            "events": [{"at": 2, "level": "Warning", "source": "K8S", "message": "slow disk"}],
            "tasks": [
                {"id": "worker-0", "exit_code": 0, "log": {"lines": {"count": 100, "every": 0.1}}},
                {
                    "id": "worker-1",
                    "exit_code": 3,
                    "message": "boom",
                    "log": {"lines": {"count": 1, "every": 1}},
                },
            ],
        }
    )
    monkeypatch.setenv("AIRFLOW_CONN_MODELARTS_DEFAULT", emu.connection_json())
    return emu


def test_preview_and_links_follow_the_current_size(live_emu):
    hook = ModelArtsHook(max_retries=0)
    live_emu.advance(1.0)
    line = len(b"line 00001 of the training log\n")
    started = time.monotonic()
    preview = hook.preview_task_log("j", "worker-0")
    url = hook.get_task_log_url("j", "worker-0")
    whole = requests.get(url, timeout=10).content
    elapsed = time.monotonic() - started
    # The log grows by one line every 0.1 s of the emulator's clock, which runs in real time between calls.
    assert 0 <= len(whole) - preview["full_size"] <= (math.ceil(elapsed / 0.1) + 1) * line
    assert len(whole) < 100 * line
    assert preview["content"].startswith("line 00001 of the training log\n")
    live_emu.advance(20)
    assert hook.preview_task_log("j", "worker-0")["full_size"] == 100 * len(
        b"line 00001 of the training log\n"
    )


def test_events_follow_the_timeline(live_emu):
    hook = ModelArtsHook(max_retries=0)
    live_emu.advance(3)
    assert [e["message"] for e in hook.get_training_job_events("j")] == [
        "slow disk",
        "Training job phase changed to Running",
    ]
    live_emu.advance(10)
    errors = hook.get_training_job_events("j", level="Error", limit=1)
    assert errors == [
        {
            "message": "Task worker-1 exited with code 3: boom",
            "level": "Error",
            "time": errors[0]["time"],
            "source": "Task",
        }
    ]
    asc = hook.get_training_job_events("j", order="asc")
    assert asc[0]["message"] == "Training job phase changed to Running"
    record = hook.get_training_job("j")["status"]["running_records"][-1]
    assert record["end_reason"] == "task worker-1 exited with code 3"


def test_event_and_range_arguments_are_checked_before_any_request(live_emu):
    hook = ModelArtsHook(max_retries=0)
    live_emu.reset_counters()
    for kwargs in ({"level": "Fatal"}, {"limit": 0}, {"limit": 101}, {"order": "up"}):
        with pytest.raises(ModelArtsValidationError):
            hook.get_training_job_events("j", **kwargs)
    for kwargs in ({"start": -1, "length": 1}, {"start": 0, "length": 0}, {"start": True, "length": 1}):
        with pytest.raises(ModelArtsValidationError):
            hook.read_log_range("http://127.0.0.1/x", **kwargs)
    with pytest.raises(ModelArtsValidationError):
        hook.read_log_range("file:///etc/passwd", start=0, length=1)
    assert live_emu.counters["events"] == 0 and live_emu.counters["obs_get"] == 0
    bad = requests.get(
        f"{live_emu.url}/v2/{live_emu.project_id}/training-jobs/j/events?limit=500", timeout=10
    )
    assert bad.status_code in (400, 401)


def test_refuse_log_url_knob(live_emu):
    live_emu.knobs.refuse_log_url = True
    hook = ModelArtsHook(max_retries=0)
    with pytest.raises(ModelArtsAuthError) as info:
        hook.get_task_log_url("j", "worker-0")
    assert info.value.status_code == 403 and info.value.error_code == "ModelArts.0108"
    assert hook.preview_task_log("j", "worker-0")["full_size"] >= 0
