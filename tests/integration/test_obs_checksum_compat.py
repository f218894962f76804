"""obs:// against a store that refuses botocore's default flexible checksums, as OBS does.

The store is moto behind ``strict_s3_endpoint``, a proxy that answers 400 InvalidArgument to any request
carrying ``x-amz-checksum-*``, ``x-amz-sdk-checksum-algorithm`` or an ``aws-chunked`` body. The obs://
file system must not send them by default (``request_checksum_calculation="when_required"``); a user's
``obs_config_kwargs`` still wins, and then the store refuses the archive.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from airflow_provider_modelarts.archiving.multipart import PART_SIZE
from airflow_provider_modelarts.emulator import ModelArtsEmulator
from airflow_provider_modelarts.exceptions import ModelArtsArchiveDestinationError
from tests.fixtures.archive_runs import run
from tests.fixtures.moto_server import MOTO_AK, MOTO_REGION, MOTO_SK
from tests.fixtures.strict_s3_proxy import StrictS3Proxy

pytestmark = pytest.mark.integration

BIG = 2 * PART_SIZE + 4 * 1024 * 1024 + 321  # three parts: two full, one short
SMALL = 300 * 1024 + 7  # under one part: a single PutObject
SCENARIO = {
    "jobs": [
        {
            "id": "job-obs",
            "name": "obs",
            "timeline": [{"phase": "Completed", "at": 0}],
            "tasks": [
                {"id": "worker-0", "exit_code": 0, "log": {"generate": {"size": BIG, "seed": 31}}},
                {"id": "worker-1", "exit_code": 0, "log": {"generate": {"size": SMALL, "seed": 32}}},
            ],
        }
    ]
}


def _client(endpoint: str) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=MOTO_AK,
        aws_secret_access_key=MOTO_SK,
        region_name=MOTO_REGION,
    )


@pytest.fixture
def emu(emulator_factory: Callable[..., ModelArtsEmulator]) -> ModelArtsEmulator:
    return emulator_factory(SCENARIO)


@pytest.fixture
def point_obs_at(
    emu: ModelArtsEmulator, strict_s3_endpoint: StrictS3Proxy, monkeypatch: pytest.MonkeyPatch
) -> Callable[..., None]:
    """Set the modelarts connection: the emulator, with obs:// at the strict store (plus ``extra``)."""
    from airflow.sdk.io import store

    # Airflow keeps one obs:// store (and its file system) per connection id for the whole process.
    monkeypatch.setattr(store, "_STORE_CACHE", {})

    def point(**extra: Any) -> None:
        conn = json.loads(emu.connection_json())
        conn["extra"].update(obs_endpoint=strict_s3_endpoint.url, **extra)
        monkeypatch.setenv("AIRFLOW_CONN_MODELARTS_DEFAULT", json.dumps(conn))

    return point


def test_the_strict_store_refuses_botocore_default_checksums(
    strict_s3_endpoint: StrictS3Proxy, s3_bucket: str
) -> None:
    with pytest.raises(ClientError) as err:
        _client(strict_s3_endpoint.url).put_object(Bucket=s3_bucket, Key="k", Body=b"a few bytes")
    assert err.value.response["Error"]["Code"] == "InvalidArgument"
    assert strict_s3_endpoint.refused and strict_s3_endpoint.refused[0][0] == "PUT"


def test_obs_archive_through_the_strict_store_holds_the_exact_bytes(
    emu: ModelArtsEmulator,
    point_obs_at: Callable[..., None],
    strict_s3_endpoint: StrictS3Proxy,
    moto_server: str,
    s3_bucket: str,
) -> None:
    point_obs_at()  # the provider's default botocore configuration
    result = run(training_job_id="job-obs", destination=f"obs://{s3_bucket}/d")
    assert strict_s3_endpoint.refused == []
    moto = _client(moto_server)
    for task, size in (("worker-0", BIG), ("worker-1", SMALL)):
        data = moto.get_object(Bucket=s3_bucket, Key=f"d/job-obs/{task}.log")["Body"].read()
        assert len(data) == size
        assert hashlib.sha256(data).hexdigest() == emu.log_sha256("job-obs", task)
    head = moto.head_object(Bucket=s3_bucket, Key="d/job-obs/worker-0.log", PartNumber=1)
    assert head["PartsCount"] == 3
    manifest_key = result["manifest"].split(f"{s3_bucket}/", 1)[1]  # obs://conn@bucket/key
    manifest = json.loads(moto.get_object(Bucket=s3_bucket, Key=manifest_key)["Body"].read())
    assert {t["task_id"]: t["sha256"] for t in manifest["tasks"]} == {
        t: emu.log_sha256("job-obs", t) for t in ("worker-0", "worker-1")
    }


def test_a_user_checksum_setting_still_wins_and_the_strict_store_refuses_it(
    point_obs_at: Callable[..., None], strict_s3_endpoint: StrictS3Proxy, s3_bucket: str
) -> None:
    point_obs_at(obs_config_kwargs={"request_checksum_calculation": "when_supported"})
    with pytest.raises(ModelArtsArchiveDestinationError):
        run(training_job_id="job-obs", destination=f"obs://{s3_bucket}/e")
    assert strict_s3_endpoint.refused
