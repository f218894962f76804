"""Overlapped multipart uploads to S3-compatible stores, over a recording fake ``s3fs`` file system.

The fake keeps every call, the part sizes and numbers, the uploads in flight at any moment and the
body objects handed over (to count the buffers held); part uploads can be held on an ``Event``.
"""

from __future__ import annotations

import hashlib
import io
import threading

import pytest
from s3fs import S3FileSystem

from airflow_provider_modelarts.archiving.log_copy import StopSignal
from airflow_provider_modelarts.archiving.multipart import PARTS_IN_FLIGHT, MultipartWriter
from airflow_provider_modelarts.archiving.staging import StagedObject
from airflow_provider_modelarts.exceptions import (
    ModelArtsArchiveDestinationError,
    ModelArtsArchiveStoppedError,
)
from tests.fixtures.fake_obs import FakeObs, make_log, run_one

MiB = 1024 * 1024
PART = 5 * MiB


class RecordingS3(S3FileSystem):
    """An ``s3fs.S3FileSystem`` whose ``call_s3`` records instead of sending (no network)."""

    cachable = False  # a fresh instance per test

    def __init__(self, *, fail_part: int | None = None) -> None:
        super().__init__(anon=True)
        self.calls: list[str] = []
        self.parts: dict[int, bytes] = {}
        self.bodies: list[io.BytesIO] = []
        self.objects: dict[str, bytes] = {}
        self.aborted: list[str] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.gate = threading.Event()
        self.gate.set()
        self.started = threading.Semaphore(0)
        self.fail_part = fail_part
        self._lock = threading.Lock()

    def call_s3(self, method, *args, **kwargs):  # type: ignore[override]
        with self._lock:
            self.calls.append(method)
        key = f"{kwargs['Bucket']}/{kwargs['Key']}"
        if method == "create_multipart_upload":
            return {"UploadId": "up-1"}
        if method == "upload_part":
            return self._upload_part(kwargs)
        if method == "complete_multipart_upload":
            numbers = [p["PartNumber"] for p in kwargs["MultipartUpload"]["Parts"]]
            assert numbers == sorted(self.parts) == list(range(1, len(numbers) + 1))
            self.objects[key] = b"".join(self.parts[n] for n in numbers)
            return {}
        if method == "put_object":
            self.objects[key] = bytes(kwargs["Body"])
            return {}
        if method == "abort_multipart_upload":
            with self._lock:
                assert self.in_flight == 0, "aborted while a part was still being sent"
            self.aborted.append(kwargs["UploadId"])
            self.parts.clear()
            return {}
        raise AssertionError(method)

    def _upload_part(self, kwargs):
        body = kwargs["Body"]
        # A file read from its position, as the HTTP client does (seekable, so a retry can resend it).
        assert isinstance(body, io.BytesIO) and body.seekable()
        with self._lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            if not any(b is body for b in self.bodies):
                self.bodies.append(body)
        self.started.release()
        try:
            self.gate.wait(30)
            if kwargs["PartNumber"] == self.fail_part:
                raise PermissionError(13, "Access Denied")
            self.parts[kwargs["PartNumber"]] = body.read()
            return {"ETag": f'"etag-{kwargs["PartNumber"]}"'}
        finally:
            with self._lock:
                self.in_flight -= 1


def staged(fs, key="bkt/job/worker-0.log", **kw):
    return StagedObject(_ObjectDest(fs, key), **kw)  # type: ignore[arg-type]


def write_in_chunks(writer, data: bytes, chunk: int = MiB) -> None:
    for i in range(0, len(data), chunk):
        writer.write(memoryview(data)[i : i + chunk])


def test_parts_upload_in_order_and_sizes_and_the_object_appears_only_at_commit():
    fs = RecordingS3()
    data = make_log(3 * PART + 12345, seed=1)
    writer = MultipartWriter(fs, "bkt/a.log", part_size=PART, parts_in_flight=2)
    write_in_chunks(writer, data)
    writer.seal()
    assert fs.objects == {} and "complete_multipart_upload" not in fs.calls
    writer.commit()
    assert [len(fs.parts[n]) for n in sorted(fs.parts)] == [PART, PART, PART, 12345]
    assert fs.objects["bkt/a.log"] == data
    assert fs.calls[0] == "create_multipart_upload" and fs.calls[-1] == "complete_multipart_upload"


def test_receiver_keeps_writing_while_part_uploads_are_blocked_and_the_queue_is_bounded():
    fs = RecordingS3()
    fs.gate.clear()  # every part upload blocks until released
    data = make_log(6 * PART, seed=2)
    writer = MultipartWriter(fs, "bkt/b.log", part_size=PART, parts_in_flight=2)
    # Two full parts and most of a third are accepted while no upload has finished.
    write_in_chunks(writer, data[: 3 * PART - MiB])
    for _ in range(2):
        assert fs.started.acquire(timeout=10)
    assert fs.in_flight == 2 and fs.parts == {}
    # The third part needs a slot: the writer waits (bounded queue) until an upload finishes.
    rest = threading.Thread(target=write_in_chunks, args=(writer, data[3 * PART - MiB :]))
    rest.start()
    rest.join(0.5)
    assert rest.is_alive() and fs.max_in_flight == 2 and fs.parts == {}
    fs.gate.set()
    rest.join(30)
    assert not rest.is_alive()
    writer.seal()
    writer.commit()
    assert fs.objects["bkt/b.log"] == data
    assert fs.max_in_flight == 2
    # Memory: the part buffers are reused; at most parts_in_flight + 1 of them ever existed.
    assert len(fs.bodies) <= 3


def test_small_object_is_one_put_at_commit_and_nothing_before():
    fs = RecordingS3()
    writer = staged(fs)
    writer.write(b"hello")
    writer.seal()
    assert fs.calls == []
    writer.commit()
    assert fs.calls == ["put_object"] and fs.objects == {"bkt/job/worker-0.log": b"hello"}


def test_failed_part_raises_a_typed_error_aborts_after_the_others_and_leaves_nothing():
    fs = RecordingS3(fail_part=2)
    obj = staged(fs)
    with pytest.raises(ModelArtsArchiveDestinationError) as err:
        write_in_chunks(obj, make_log(8 * PART, seed=3))
        obj.seal()
    assert err.value.path == "s3://bkt/job/worker-0.log" and "PermissionError" in (err.value.cause or "")
    obj.discard()
    assert fs.aborted == ["up-1"] and fs.objects == {}
    assert "complete_multipart_upload" not in fs.calls and "put_object" not in fs.calls


def test_stop_while_waiting_for_an_upload_slot_stops_and_aborts():
    fs = RecordingS3()
    fs.gate.clear()
    stop = StopSignal()
    obj = staged(fs, check_stop=lambda: stop.check("job/worker-0"))
    errors: list[BaseException] = []

    def receive() -> None:
        try:
            write_in_chunks(obj, make_log(10 * PART, seed=4))
        except BaseException as e:
            errors.append(e)

    receiver = threading.Thread(target=receive)
    receiver.start()
    for _ in range(PARTS_IN_FLIGHT):  # as many parts in flight as allowed, all held
        assert fs.started.acquire(timeout=10)
    stop.stop()
    receiver.join(10)
    assert not receiver.is_alive() and isinstance(errors[0], ModelArtsArchiveStoppedError)
    releaser = threading.Timer(0.2, fs.gate.set)
    releaser.start()
    obj.discard()  # waits for the parts being sent, then aborts
    assert fs.aborted == ["up-1"] and fs.objects == {} and fs.in_flight == 0


def test_log_copy_to_object_store_stopped_mid_upload_commits_nothing():
    fs = RecordingS3()
    fs.gate.clear()
    log = make_log(6 * PART, seed=5)
    stop = StopSignal()
    outcome: list[BaseException] = []

    def copy() -> None:
        with FakeObs({"worker-0": log}) as obs:
            try:
                run_one(obs, _ObjectDest(fs), stop=stop)
            except BaseException as e:
                outcome.append(e)

    runner = threading.Thread(target=copy)
    runner.start()
    assert fs.started.acquire(timeout=30)
    stop.stop()
    fs.gate.set()
    runner.join(30)
    assert isinstance(outcome[0], ModelArtsArchiveStoppedError)
    assert fs.aborted == ["up-1"] and fs.objects == {} and "complete_multipart_upload" not in fs.calls


def test_log_copy_to_object_store_is_verified_and_overlapped():
    fs = RecordingS3()
    log = make_log(4 * 8 * MiB + 777, seed=6)
    with FakeObs({"worker-0": log}) as obs:
        result = run_one(obs, _ObjectDest(fs))
    assert fs.objects["bkt/archive/job-1/worker-0.log"] == log
    assert result.sha256 == hashlib.sha256(log).hexdigest() and result.size == len(log)
    assert sorted(fs.parts) == [1, 2, 3, 4, 5]


class _ObjectDest:
    """The bits of ``ObjectStoragePath`` the copy uses, over the recording file system."""

    def __init__(self, fs, path: str = "bkt/archive") -> None:
        self.fs, self.path = fs, path

    def __truediv__(self, other: str) -> _ObjectDest:
        return _ObjectDest(self.fs, f"{self.path}/{other}")

    def __str__(self) -> str:
        return f"s3://{self.path}"
