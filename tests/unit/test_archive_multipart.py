"""Overlapped multipart uploads to S3-compatible stores, over a recording fake ``s3fs`` file system.

The fake keeps every call, the part sizes and numbers, the uploads in flight at any moment and the
body objects handed over (to count the buffers held); part uploads can be held on an ``Event``.
"""

from __future__ import annotations

import base64
import hashlib
import io
import threading
import zlib
from types import SimpleNamespace

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

    def __init__(
        self,
        *,
        fail_part: int | None = None,
        checksum_mode: str = "when_supported",
        fail_create: bool = False,
    ) -> None:
        super().__init__(anon=True)
        self.checksum_mode = checksum_mode
        self.fail_create = fail_create
        self.create_kwargs: dict[str, object] = {}
        self.create_gate = threading.Event()
        self.create_gate.set()
        self.part_checksums: dict[int, str | None] = {}
        self.completed_parts: list[dict[str, object]] = []
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

    def connect(self, refresh=False):  # type: ignore[override]
        # The client, as far as the writer looks at it: its request-checksum setting.
        return SimpleNamespace(
            meta=SimpleNamespace(config=SimpleNamespace(request_checksum_calculation=self.checksum_mode))
        )

    def call_s3(self, method, *args, **kwargs):  # type: ignore[override]
        with self._lock:
            self.calls.append(method)
        key = f"{kwargs['Bucket']}/{kwargs['Key']}"
        if method == "create_multipart_upload":
            self.create_gate.wait(30)
            if self.fail_create:
                raise PermissionError(13, "Access Denied")
            self.create_kwargs = {k: v for k, v in kwargs.items() if k not in ("Bucket", "Key")}
            return {"UploadId": "up-1"}
        if method == "upload_part":
            return self._upload_part(kwargs)
        if method == "complete_multipart_upload":
            self.completed_parts = kwargs["MultipartUpload"]["Parts"]
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
            data = body.read()
            self.parts[kwargs["PartNumber"]] = data
            algorithm = kwargs.get("ChecksumAlgorithm")
            self.part_checksums[kwargs["PartNumber"]] = algorithm
            if algorithm is None:
                return {"ETag": f'"etag-{kwargs["PartNumber"]}"'}
            assert algorithm == "CRC32"  # the client computes it; the store answers it, as S3 does
            crc = base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()
            return {"ETag": f'"etag-{kwargs["PartNumber"]}"', "ChecksumCRC32": crc}
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


def test_parts_ask_for_crc32_and_the_completion_lists_them_where_the_client_computes_checksums():
    fs = RecordingS3(checksum_mode="when_supported")
    data = make_log(2 * PART + 99, seed=7)
    writer = MultipartWriter(fs, "bkt/c.log", part_size=PART, parts_in_flight=2)
    write_in_chunks(writer, data, chunk=777_777)  # chunks straddle the part boundaries
    writer.seal()
    writer.commit()
    assert fs.create_kwargs == {"ChecksumAlgorithm": "CRC32"}
    assert fs.part_checksums == {1: "CRC32", 2: "CRC32", 3: "CRC32"}
    crcs = [base64.b64encode(zlib.crc32(fs.parts[n]).to_bytes(4, "big")).decode() for n in (1, 2, 3)]
    assert [p["ChecksumCRC32"] for p in fs.completed_parts] == crcs
    assert fs.objects["bkt/c.log"] == data


def test_no_checksum_headers_where_the_client_sends_them_only_when_required():
    # obs:// (OBS refuses x-amz-checksum-* headers) and any client configured "when_required".
    fs = RecordingS3(checksum_mode="when_required")
    data = make_log(2 * PART + 5, seed=8)
    writer = MultipartWriter(fs, "bkt/d.log", part_size=PART, parts_in_flight=2)
    write_in_chunks(writer, data)
    writer.seal()
    writer.commit()
    assert fs.create_kwargs == {}
    assert set(fs.part_checksums.values()) == {None}
    assert all(set(p) == {"PartNumber", "ETag"} for p in fs.completed_parts)
    assert fs.objects["bkt/d.log"] == data


def test_with_an_expected_size_the_upload_is_created_at_once_while_parts_are_received():
    fs = RecordingS3()
    fs.create_gate.clear()  # the store is slow to create the upload (client set-up, first request)
    data = make_log(4 * PART, seed=9)
    writer = MultipartWriter(fs, "bkt/e.log", part_size=PART, parts_in_flight=2, expected_size=len(data))
    deadline = threading.Event()
    for _ in range(100):  # creation started before a single byte was written
        if "create_multipart_upload" in fs.calls:
            break
        deadline.wait(0.05)
    assert fs.calls == ["create_multipart_upload"]
    # The receiver goes on: parts queue (bounded) behind the creation, none is sent before it.
    receiver = threading.Thread(target=write_in_chunks, args=(writer, data))
    receiver.start()
    receiver.join(0.5)
    assert receiver.is_alive() and fs.parts == {} and fs.in_flight == 0
    fs.create_gate.set()
    receiver.join(30)
    writer.seal()
    writer.commit()
    assert fs.objects["bkt/e.log"] == data and fs.max_in_flight <= 2 and len(fs.bodies) <= 3


def test_an_upload_started_for_bytes_that_never_came_is_aborted_and_the_empty_object_put():
    fs = RecordingS3()
    writer = MultipartWriter(fs, "bkt/f.log", part_size=PART, expected_size=3 * PART)
    writer.seal()
    writer.commit()
    assert fs.objects == {"bkt/f.log": b""} and fs.aborted == ["up-1"]
    assert "upload_part" not in fs.calls and "complete_multipart_upload" not in fs.calls


def test_a_refused_creation_is_a_typed_error_and_nothing_is_left_to_abort():
    fs = RecordingS3(fail_create=True)
    obj = staged(fs, expected_size=3 * PART)
    with pytest.raises(ModelArtsArchiveDestinationError) as err:
        write_in_chunks(obj, make_log(3 * PART, seed=10))
        obj.seal()
    assert "PermissionError" in (err.value.cause or "")
    obj.discard()
    assert fs.aborted == [] and fs.objects == {} and "upload_part" not in fs.calls


def test_discard_while_the_creation_is_still_running_waits_for_it_then_aborts():
    fs = RecordingS3()
    fs.create_gate.clear()
    writer = MultipartWriter(fs, "bkt/g.log", part_size=PART, expected_size=3 * PART)
    write_in_chunks(writer, make_log(PART + 1, seed=11))
    threading.Timer(0.3, fs.create_gate.set).start()
    writer.discard()
    assert fs.aborted == ["up-1"] and fs.objects == {}


class _ObjectDest:
    """The bits of ``ObjectStoragePath`` the copy uses, over the recording file system."""

    def __init__(self, fs, path: str = "bkt/archive") -> None:
        self.fs, self.path = fs, path

    def __truediv__(self, other: str) -> _ObjectDest:
        return _ObjectDest(self.fs, f"{self.path}/{other}")

    def __str__(self) -> str:
        return f"s3://{self.path}"
