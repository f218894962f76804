"""The pure log-stream core: cursors, partial lines, progress bars, bounds, preview diffing, JSON state."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from airflow_provider_modelarts.exceptions import ModelArtsValidationError
from airflow_provider_modelarts.log_stream import (
    MAX_LINE_BYTES,
    LogStreamState,
    WorkerCursor,
    format_line,
    select_stream_workers,
    validate_stream_args,
)

W = "worker-0"
BIG = 1 << 30


def numbered_log(count: int) -> bytes:
    return b"".join(b"line %05d\n" % n for n in range(1, count + 1))


def shown(lines: list[str]) -> list[str]:
    return [line.removeprefix(f"[{W}] ") for line in lines]


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(c, len(data)) for c in cuts})
    chunks, last = [], 0
    for point in [*points, len(data)]:
        chunks.append(data[last:point])
        last = point
    return chunks


@settings(max_examples=200, deadline=None)
@given(count=st.integers(0, 60), cuts=st.lists(st.integers(0, 700), max_size=30), trailing=st.booleans())
def test_any_chunking_gives_each_line_once_in_order(count, cuts, trailing):
    data = numbered_log(count) + (b"unterminated" if trailing else b"")
    state = LogStreamState()
    lines: list[str] = []
    offset = 0
    for chunk in split_at(data, cuts):
        offset += len(chunk)
        lines += state.apply_range(
            W, chunk, start=offset - len(chunk), total=offset, max_bytes=BIG, where="x"
        )
        state = LogStreamState.from_dict(json.loads(json.dumps(state.to_dict())))
    lines += state.flush()
    expected = [f"line {n:05d}" for n in range(1, count + 1)] + (["unterminated"] if trailing else [])
    assert shown(lines) == expected


@settings(max_examples=100, deadline=None)
@given(count=st.integers(1, 40), cuts=st.lists(st.integers(0, 500), max_size=20))
def test_server_ignoring_range_repeats_nothing(count, cuts):
    data = numbered_log(count)
    state = LogStreamState()
    lines: list[str] = []
    for end in [*sorted({min(c, len(data)) for c in cuts}), len(data)]:
        # A 200 answer: the whole object from byte 0 as it stands now.
        lines += state.apply_range(W, data[:end], start=0, total=end, max_bytes=BIG, where="x")
    assert shown(lines) == [f"line {n:05d}" for n in range(1, count + 1)]


@settings(max_examples=100, deadline=None)
@given(count=st.integers(1, 40), cuts=st.lists(st.integers(0, 500), max_size=20))
def test_preview_diffing_with_a_large_window_gives_each_line_once(count, cuts):
    data = numbered_log(count)
    state = LogStreamState()
    lines: list[str] = []
    for end in [*sorted({min(c, len(data)) for c in cuts}), len(data)]:
        lines += state.apply_preview(W, data[:end].decode(), full_size=end, max_bytes=BIG, where="x")
    lines += state.flush()
    assert shown(lines) == [f"line {n:05d}" for n in range(1, count + 1)]


@settings(max_examples=150, deadline=None)
@given(
    count=st.integers(1, 200),
    cuts=st.lists(st.integers(0, 3000), max_size=15),
    max_bytes=st.integers(20, 400),
)
def test_bounded_polls_never_repeat_or_reorder_lines(count, cuts, max_bytes):
    data = numbered_log(count)
    state = LogStreamState()
    lines: list[str] = []
    for end in [*sorted({min(c, len(data)) for c in cuts}), len(data)]:
        start = state.cursors[W].offset if W in state.cursors else 0
        # As the reader asks: at most max_bytes from the cursor, with the current size.
        lines += state.apply_range(
            W, data[start : start + max_bytes], start=start, total=end, max_bytes=max_bytes, where="x"
        )
    lines += state.flush()
    whole = [line for line in shown(lines) if line.startswith("line ") and len(line) == 10]
    shown_numbers = [int(line[-5:]) for line in whole]
    assert shown_numbers == sorted(set(shown_numbers))  # strictly increasing: no repeat, no reorder
    # Anything else is a marker or the start of a line cut by a skip, and says so.
    others = [line for line in shown(lines) if line not in whole]
    assert all(line.startswith("... ") or line.endswith(" [line cut]") for line in others)
    markers = [line for line in lines if "bytes not shown" in line]
    if not markers:
        assert shown_numbers == list(range(1, count + 1))


def test_preview_gap_prints_one_marker_and_resumes_at_a_line_start():
    data = numbered_log(100)
    state = LogStreamState()
    first = state.apply_preview(W, data[:33].decode(), full_size=33, max_bytes=BIG, where="in the archive")
    assert shown(first) == ["line 00001", "line 00002", "line 00003"]
    # The log grew by 500 bytes but the preview window holds only the last 95.
    window = data[438:533]
    lines = state.apply_preview(W, window.decode(), full_size=533, max_bytes=BIG, where="in the archive")
    marker = [line for line in lines if "not shown" in line]
    assert len(marker) == 1
    assert "405 bytes not shown" in marker[0] and "in the archive" in marker[0]
    assert "line 00003 [line cut]" not in lines  # line 3 was complete and shown before
    rest = [line for line in shown(lines) if line.startswith("line")]
    # The window starts mid-line: that fragment is dropped, the following whole lines are shown.
    assert rest == [f"line {n:05d}" for n in range(41, 49)]


def test_max_bytes_bounds_a_poll_then_marks_and_skips():
    data = numbered_log(1000)
    state = LogStreamState()
    lines = state.apply_range(
        W, data[:1024], start=0, total=len(data), max_bytes=1024, where="in the archive"
    )
    assert shown(lines)[:2] == ["line 00001", "line 00002"]
    assert sum("not shown" in line for line in lines) == 1
    assert f"{len(data) - 1024 - 1} bytes not shown" in lines[-1]
    assert "stream_max_bytes=1024" in lines[-1]
    assert state.cursors[W].offset == len(data) - 1
    # The next read starts at the last byte seen (a newline): no whole line is lost.
    more = data[-1:] + b"line 01001\n"
    assert shown(state.apply_range(W, more, start=len(data) - 1, total=None, max_bytes=1024, where="x")) == [
        "line 01001"
    ]


def test_progress_bars_collapse_and_invalid_utf8_is_replaced():
    assert format_line(W, b"progress 0%\rprogress 50%\rprogress 100% step 9") == f"[{W}] progress 100% step 9"
    assert format_line(W, b"ok\r") == f"[{W}] ok"
    assert format_line(W, b"bad:\xff\xfe") == f"[{W}] bad:\ufffd\ufffd"
    state = LogStreamState()
    assert shown(state.apply_range(W, b"a\r\nb\r\n", start=0, total=6, max_bytes=BIG, where="x")) == [
        "a",
        "b",
    ]


def test_multibyte_characters_split_across_reads_survive():
    data = "température 20°C\n".encode()
    state = LogStreamState()
    cut = data.index("°".encode()) + 1  # inside the two-byte character
    lines = state.apply_range(W, data[:cut], start=0, total=cut, max_bytes=BIG, where="x")
    lines += state.apply_range(W, data[cut:], start=cut, total=len(data), max_bytes=BIG, where="x")
    assert shown(lines) == ["température 20°C"]


def test_an_endless_line_is_shown_in_pieces():
    state = LogStreamState()
    data = b"x" * (MAX_LINE_BYTES + 10)
    lines = state.apply_range(W, data, start=0, total=len(data), max_bytes=BIG, where="x")
    assert len(lines) == 1 and lines[0].endswith("[line continues]")
    assert state.cursors[W].pending == b""


def test_state_rejects_bad_input():
    for bad in ([], {"version": 2}, {"version": 1, "cursors": {"w": {"offset": -1}}}):
        with pytest.raises(ModelArtsValidationError):
            LogStreamState.from_dict(bad)
    with pytest.raises(ModelArtsValidationError):
        WorkerCursor.from_dict({"offset": 0, "pending": "***"})
    assert LogStreamState.from_dict(None).cursors == {}


@pytest.mark.parametrize(
    "kwargs",
    [
        {"stream_logs": "yes"},
        {"stream_log_tasks": "worker-0"},
        {"stream_log_tasks": ["../x"]},
        {"stream_log_tasks": [""]},
        {"stream_max_bytes": 10},
        {"stream_max_bytes": True},
    ],
)
def test_validate_stream_args(kwargs):
    args = {"stream_logs": True, "stream_log_tasks": None, "stream_max_bytes": 65536, **kwargs}
    with pytest.raises(ModelArtsValidationError):
        validate_stream_args(**args)


def test_default_workers_are_the_first_and_the_failed_ones():
    job = {
        "status": {
            "tasks": [f"worker-{i}" for i in range(64)],
            "task_statuses": [
                {"task": "worker-7", "exit_code": 1},
                {"task": "worker-9", "exit_code": 0},
                {"task": "evil/../x", "exit_code": 1},
            ],
        }
    }
    assert select_stream_workers(job, None) == ["worker-0", "worker-7"]
    assert select_stream_workers(job, ["worker-3", "worker-99"]) == ["worker-3"]
    assert select_stream_workers({}, None) == []
