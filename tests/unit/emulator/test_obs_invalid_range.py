"""``knobs.invalid_range_whole_object``: an unsatisfiable Range answered like OBS, 200 and the whole object."""

from __future__ import annotations

import requests


def _get(url: str, byte_range: str) -> requests.Response:
    return requests.get(url, headers={"Range": byte_range}, timeout=10)


def test_invalid_range_is_416_by_default_and_the_whole_object_with_the_knob(emulator):
    url = emulator.sign_log_url("job-multi", "worker-0")
    size = emulator.log_size("job-multi", "worker-0")
    whole = emulator.log_bytes("job-multi", "worker-0")
    assert not emulator.knobs.invalid_range_whole_object
    for byte_range in (f"bytes={size}-", f"bytes={size + 5}-{size + 9}", "bytes=-0"):
        refused = _get(url, byte_range)
        assert refused.status_code == 416 and refused.headers["Content-Range"] == f"bytes */{size}"
    emulator.knobs.invalid_range_whole_object = True
    for byte_range in (f"bytes={size}-", f"bytes={size + 5}-{size + 9}", "bytes=-0"):
        answer = _get(url, byte_range)
        assert answer.status_code == 200 and "Content-Range" not in answer.headers
        assert answer.headers["Content-Length"] == str(size) and answer.content == whole
    valid = _get(url, "bytes=10-19")  # a satisfiable range is still served as asked
    assert valid.status_code == 206 and valid.content == whole[10:20]
    assert valid.headers["Content-Range"] == f"bytes 10-19/{size}"
