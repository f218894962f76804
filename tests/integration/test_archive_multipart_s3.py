"""A log of several upload parts archived to s3:// on a real moto server, over real HTTP from the emulator.

The parts are sent while the log is received; the object must hold exactly the log's bytes (sha256),
be made of the expected parts, and a copy that fails must leave neither an object nor an open upload.
"""

from __future__ import annotations

import base64
import hashlib
import json
import zlib

import boto3
import pytest
from airflow.providers.common.compat.sdk import ObjectStoragePath

from airflow_provider_modelarts.archiving.multipart import PART_SIZE
from airflow_provider_modelarts.exceptions import ModelArtsLogTransferError
from tests.fixtures.archive_runs import run
from tests.fixtures.moto_server import MOTO_AK, MOTO_REGION, MOTO_SK

pytestmark = pytest.mark.integration

MiB = 1024 * 1024
LOG_SIZE = 3 * PART_SIZE + 4321  # four parts: three full, one short
SCENARIO = {
    "jobs": [
        {
            "id": "job-multi",
            "name": "multi",
            "timeline": [{"phase": "Completed", "at": 0}],
            "tasks": [
                {"id": "worker-0", "exit_code": 0, "log": {"generate": {"size": LOG_SIZE, "seed": 21}}}
            ],
        }
    ]
}


@pytest.fixture
def emu(emulator_factory, monkeypatch):
    emu = emulator_factory(SCENARIO)
    monkeypatch.setenv("AIRFLOW_CONN_MODELARTS_DEFAULT", emu.connection_json())
    return emu


@pytest.fixture
def client(moto_server):
    return boto3.client(
        "s3",
        endpoint_url=moto_server,
        aws_access_key_id=MOTO_AK,
        aws_secret_access_key=MOTO_SK,
        region_name=MOTO_REGION,
    )


def test_multipart_log_to_s3_holds_the_exact_bytes(emu, aws_s3_conn, s3_bucket, client):
    emu.knobs.drop_after_bytes = PART_SIZE + MiB + 1  # a resume in the middle of the second part
    emu.knobs.drop_downloads = 1
    result = run(
        training_job_id="job-multi", destination=f"s3://{s3_bucket}/a", destination_conn_id=aws_s3_conn
    )
    task = result["tasks"][0]
    data = ObjectStoragePath(task["uri"], conn_id=aws_s3_conn).read_bytes()
    expected = emu.log_sha256("job-multi", "worker-0")
    assert len(data) == LOG_SIZE == task["size"]
    assert hashlib.sha256(data).hexdigest() == expected == task["sha256"]
    head = client.head_object(Bucket=s3_bucket, Key="a/job-multi/worker-0.log", PartNumber=1)
    assert head["PartsCount"] == 4 and head["ContentLength"] == PART_SIZE
    # Declared CRC-32 with every part's checksum listed, as boto3's transfer manager does: the store keeps
    # a composite checksum of the four parts (the CRC-32 of their CRC-32s).
    whole = client.head_object(Bucket=s3_bucket, Key="a/job-multi/worker-0.log", ChecksumMode="ENABLED")
    crcs = b"".join(
        zlib.crc32(data[i : i + PART_SIZE]).to_bytes(4, "big") for i in range(0, LOG_SIZE, PART_SIZE)
    )
    assert whole["ChecksumCRC32"] == base64.b64encode(zlib.crc32(crcs).to_bytes(4, "big")).decode()
    manifest = json.loads(ObjectStoragePath(result["manifest"], conn_id=aws_s3_conn).read_bytes())
    assert manifest["tasks"][0]["connections"] == 2 and manifest["tasks"][0]["sha256"] == expected
    assert client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", []) == []


def test_failed_multipart_log_leaves_no_object_and_no_open_upload(emu, aws_s3_conn, s3_bucket, client):
    # Every download drops after two parts' worth: the copy gives up after max_attempts.
    emu.knobs.drop_after_bytes = 2 * PART_SIZE + 1
    emu.knobs.drop_downloads = 1000
    emu.knobs.ignore_range = True  # every attempt restarts from byte 0, so the log never completes
    with pytest.raises(ModelArtsLogTransferError):
        run(
            training_job_id="job-multi",
            destination=f"s3://{s3_bucket}/b",
            destination_conn_id=aws_s3_conn,
            max_attempts=2,
        )
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=s3_bucket).get("Contents", [])]
    assert "b/job-multi/worker-0.log" not in keys
    assert client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", []) == []


def test_multipart_log_to_obs_holds_the_exact_bytes(emu, moto_server, s3_bucket, client, monkeypatch):
    # obs:// through the provider's OBS file system (s3fs subclass), pointed at moto.
    conn = json.loads(emu.connection_json())
    conn["extra"]["obs_endpoint"] = moto_server
    monkeypatch.setenv("AIRFLOW_CONN_MODELARTS_DEFAULT", json.dumps(conn))
    result = run(training_job_id="job-multi", destination=f"obs://{s3_bucket}/c")
    data = client.get_object(Bucket=s3_bucket, Key="c/job-multi/worker-0.log")["Body"].read()
    assert (
        hashlib.sha256(data).hexdigest()
        == emu.log_sha256("job-multi", "worker-0")
        == result["tasks"][0]["sha256"]
    )
    head = client.head_object(Bucket=s3_bucket, Key="c/job-multi/worker-0.log", PartNumber=1)
    assert head["PartsCount"] == 4
    assert client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", []) == []
