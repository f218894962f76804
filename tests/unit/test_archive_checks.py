"""The pure checks of link answers, the stall detector, the signature safety net and the link-host extra."""

from __future__ import annotations

import json

import pytest
from airflow.providers.common.compat.sdk import ObjectStoragePath
from hypothesis import given
from hypothesis import strategies as st

from airflow_provider_modelarts.archiving.checks import (
    BodyPlan,
    ResponseRejected,
    body_outcome,
    parse_content_range,
    plan_response,
)
from airflow_provider_modelarts.archiving.log_copy import LogCopy, StallDetector
from airflow_provider_modelarts.connection import ModelArtsConnectionConfig
from airflow_provider_modelarts.exceptions import ModelArtsConfigError, ModelArtsLogTransferError


def test_200_states_its_total_with_content_length():
    plan = plan_response(200, {"Content-Length": "10"}, offset=0, known_total=None)
    assert plan == BodyPlan(start=0, total=10, wire_length=10, encoding=None, restart=False)


def test_200_to_a_range_request_restarts():
    assert plan_response(200, {"Content-Length": "10"}, offset=4, known_total=10).restart


def test_gzip_content_length_counts_encoded_bytes_not_the_log():
    plan = plan_response(200, {"Content-Length": "7", "Content-Encoding": "gzip"}, offset=0, known_total=None)
    assert plan.total is None and plan.wire_length == 7 and plan.encoding == "gzip"


@pytest.mark.parametrize("encoding", ["br", "zstd", "compress"])
def test_unknown_encodings_are_refused(encoding):
    with pytest.raises(ResponseRejected, match="Content-Encoding"):
        plan_response(200, {"Content-Encoding": encoding}, offset=0, known_total=None)


@pytest.mark.parametrize(
    ("headers", "offset", "known", "restart"),
    [
        ({"Content-Range": "bytes 5-9/*"}, 5, 10, True),  # a known total replaced by *
        ({"Content-Range": "bytes 5-9/11"}, 5, 10, True),  # ... or by another number
        ({"Content-Range": "bytes 4-9/10"}, 5, 10, True),  # resumed elsewhere
        ({"Content-Range": "bytes 5-9/10", "Content-Length": "4"}, 5, 10, False),
        ({"Content-Range": "bytes 9-5/10"}, 5, 10, False),
        ({"Content-Range": "bytes 5-10/10"}, 5, 10, False),
        ({}, 5, 10, False),
        ({"Content-Range": "bytes 5-9/10", "Content-Encoding": "gzip"}, 5, 10, False),
    ],
)
def test_unusable_206_answers(headers, offset, known, restart):
    with pytest.raises(ResponseRejected) as ei:
        plan_response(206, headers, offset=offset, known_total=known)
    assert ei.value.restart is restart


@given(
    total=st.integers(min_value=1, max_value=10**12),
    offset=st.integers(min_value=0, max_value=10**12),
    stated=st.one_of(st.none(), st.integers(min_value=1, max_value=10**12)),
)
def test_a_known_total_is_never_replaced(total, offset, stated):
    """Whatever a 206 states, the plan either keeps the known total or is rejected with a restart."""
    if offset >= total:
        return
    last = total - 1 if stated is None else min(stated, total) - 1
    if last < offset:
        return
    header = f"bytes {offset}-{last}/{'*' if stated is None else stated}"
    try:
        plan = plan_response(206, {"Content-Range": header}, offset=offset, known_total=total)
    except ResponseRejected as r:
        assert r.restart and stated != total
        return
    assert plan.total == total


@given(
    received=st.integers(0, 100), offset=st.integers(0, 200), total=st.one_of(st.none(), st.integers(0, 200))
)
def test_body_outcome_is_complete_only_at_a_stated_total(received, offset, total):
    plan = BodyPlan(start=0, total=total, wire_length=None, encoding=None, restart=False)
    try:
        outcome = body_outcome(plan=plan, received=received, offset=offset, stream_ended=False)
    except ResponseRejected:
        assert total is not None and offset > total
        return
    assert (outcome == "complete") == (total is not None and offset == total)
    if total is None:
        assert outcome == "probe"


def test_encoded_body_is_complete_only_when_its_stream_ended():
    plan = BodyPlan(start=0, total=None, wire_length=None, encoding="gzip", restart=False)
    assert body_outcome(plan=plan, received=5, offset=50, stream_ended=False) == "short"
    assert body_outcome(plan=plan, received=5, offset=50, stream_ended=True) == "complete"


def test_parse_content_range():
    assert parse_content_range("bytes 0-9/10") == (0, 9, 10)
    assert parse_content_range("bytes 0-9/*") == (0, 9, None)


def test_stall_detector_flags_a_slow_window_and_not_a_fast_one():
    now = [0.0]
    detector = StallDetector(window=60, min_rate=1024, clock=lambda: now[0])
    now[0] = 30
    assert not detector.feed(100)
    now[0] = 61
    assert detector.feed(100)  # 200 bytes in 61 s
    now[0] = 100
    assert not detector.feed(70_000)
    now[0] = 125
    assert not detector.feed(1)  # a new window has not closed yet


def test_an_error_that_carries_the_signed_link_is_replaced_without_a_chain(tmp_path):
    class Source:
        def get_task_log_url(self, training_job_id, task_id, download=False):
            return "http://h/x.log?AccessKeyId=AK&Signature=TOPSECRET"

        def open_log_stream(self, url, *, offset=0, timeout=None):
            raise RuntimeError(f"boom while reading {url}")

    target = ObjectStoragePath(f"file://{tmp_path}/x.log")
    with pytest.raises(ModelArtsLogTransferError) as ei:
        LogCopy(Source(), "job-1", "worker-0", target, phase="Completed").run()
    assert "TOPSECRET" not in str(ei.value) and "RuntimeError" in str(ei.value)
    assert ei.value.__cause__ is None and ei.value.__context__ is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, ()),
        (["*.obs.example.com", "Other.Host"], ("*.obs.example.com", "other.host")),
        ("a.example.com, *.b.example.com", ("a.example.com", "*.b.example.com")),
    ],
)
def test_log_link_hosts_extra(value, expected):
    extra = {"project_id": "p1", "endpoint": "https://ma.example.com", "log_link_hosts": value}
    config = ModelArtsConnectionConfig.from_fields(
        login="AK", password="SK", extra=json.dumps(extra), mask=lambda s: None
    )
    assert config.log_link_hosts == expected


@pytest.mark.parametrize("value", [[1], {"a": 1}, [""]])
def test_log_link_hosts_extra_must_be_patterns(value):
    extra = {"project_id": "p1", "endpoint": "https://ma.example.com", "log_link_hosts": value}
    with pytest.raises(ModelArtsConfigError, match="log_link_hosts"):
        ModelArtsConnectionConfig.from_fields(login="AK", password="SK", extra=extra, mask=lambda s: None)
