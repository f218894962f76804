"""Concurrent runs of one job with disjoint task subsets, writing to s3:// (a real moto server)."""

from __future__ import annotations

import hashlib
import json

import pytest
from airflow.providers.common.compat.sdk import ObjectStoragePath

from tests.fixtures.fake_obs import TASKS, FakeObs, make_log, run_concurrently


@pytest.mark.parametrize("round_", range(2))
def test_concurrent_disjoint_subsets_on_s3_end_with_every_task(s3_bucket, aws_s3_conn, round_):
    dest = ObjectStoragePath(f"s3://{s3_bucket}/archive{round_}", conn_id=aws_s3_conn)
    logs = {t: make_log(5000 + i, seed=i) for i, t in enumerate(TASKS)}
    with FakeObs(logs) as obs:
        run_concurrently(obs, dest, [TASKS[i::4] for i in range(4)])
    manifest = json.loads((dest / "job-1" / "manifest.json").read_bytes())
    assert [e["task_id"] for e in manifest["tasks"]] == TASKS
    assert manifest["complete"] is True and manifest["missing"] == []
    for e in manifest["tasks"]:
        assert e["sha256"] == hashlib.sha256(logs[e["task_id"]]).hexdigest()
        assert (dest / "job-1" / f"{e['task_id']}.log").read_bytes() == logs[e["task_id"]]
