"""The manifest tells the truth: records per task, rebuilt manifests, concurrent runs, foreign entries,
destination errors."""

from __future__ import annotations

import hashlib
import json
import os

import pytest
from airflow.providers.common.compat.sdk import ObjectStoragePath

from airflow_provider_modelarts.exceptions import ModelArtsArchiveDestinationError, ModelArtsLogTransferError
from airflow_provider_modelarts.transfer import ArchiveLayout, TrainingJobLogArchiver
from tests.fixtures.fake_obs import TASKS, FakeObs, files_under, job_body, make_log, run_concurrently


def read_manifest(dest) -> dict:
    with (dest / "job-1" / "manifest.json").open("rb") as fh:
        return json.loads(fh.read())


@pytest.mark.parametrize("round_", range(3))
def test_concurrent_disjoint_subsets_on_local_disk_end_with_every_task(tmp_path, round_):
    dest = ObjectStoragePath(f"file://{tmp_path}/archive")
    logs = {t: make_log(5000 + i, seed=i) for i, t in enumerate(TASKS)}
    with FakeObs(logs) as obs:
        run_concurrently(obs, dest, [TASKS[i::4] for i in range(4)])
    manifest = read_manifest(dest)
    assert [e["task_id"] for e in manifest["tasks"]] == TASKS
    assert manifest["complete"] is True and manifest["missing"] == []
    for e in manifest["tasks"]:
        assert e["sha256"] == hashlib.sha256(logs[e["task_id"]]).hexdigest()


def test_complete_only_when_every_task_of_the_job_is_archived(tmp_path):
    dest = ObjectStoragePath(f"file://{tmp_path}/archive")
    logs = {t: make_log(100) for t in TASKS[:2]}
    with FakeObs(logs) as obs:
        TrainingJobLogArchiver(obs.source, dest).archive(job_body(tasks=logs), task_ids=["worker-0"])
        first = read_manifest(dest)
        TrainingJobLogArchiver(obs.source, dest).archive(job_body(tasks=logs), task_ids=["worker-1"])
        second = read_manifest(dest)
    assert first["complete"] is False and first["missing"] == ["worker-1"]
    assert second["complete"] is True and second["missing"] == []


def test_every_task_failing_gives_an_incomplete_manifest_listing_the_errors(tmp_path):
    dest = ObjectStoragePath(f"file://{tmp_path}/archive")
    logs = {t: make_log(100) for t in TASKS[:2]}
    with FakeObs(logs, script=["expired"] * 20) as obs, pytest.raises(ModelArtsLogTransferError):
        TrainingJobLogArchiver(obs.source, dest, max_attempts=1).archive(job_body(tasks=logs))
    manifest = read_manifest(dest)
    assert manifest["complete"] is False
    assert [(e["task_id"], e["complete"]) for e in manifest["tasks"]] == [
        ("worker-0", False),
        ("worker-1", False),
    ]
    assert all("expired" in e["error"] for e in manifest["tasks"])


@pytest.mark.parametrize(
    "bad_record",
    [
        {"record_version": 1, "training_job_id": "another-job", "entry": "filled below"},
        {"record_version": 1, "training_job_id": "job-1", "entry": {"task_id": "worker-0"}},
        {"tasks": []},
        "not json",
    ],
)
def test_foreign_or_malformed_records_are_not_trusted_and_the_log_is_copied_again(tmp_path, bad_record):
    dest = ObjectStoragePath(f"file://{tmp_path}/archive")
    data = make_log(1000)
    with FakeObs({"worker-0": data}) as obs:
        TrainingJobLogArchiver(obs.source, dest).archive(job_body(tasks=["worker-0"]))
        record_file = tmp_path / "archive/job-1/worker-0.log.record.json"
        good = json.loads(record_file.read_text())
        if isinstance(bad_record, dict) and bad_record.get("entry") == "filled below":
            bad_record = {**bad_record, "entry": good["entry"]}
        record_file.write_text(bad_record if isinstance(bad_record, str) else json.dumps(bad_record))
        TrainingJobLogArchiver(obs.source, dest).archive(job_body(tasks=["worker-0"]))
        assert obs.links == 2
    assert json.loads(record_file.read_text()) == {
        **good,
        "entry": {**good["entry"], **_volatile(record_file)},
    }


def _volatile(record_file) -> dict:
    entry = json.loads(record_file.read_text())["entry"]
    return {k: entry[k] for k in ("archived_at", "seconds", "connections")}


def test_a_manifest_entry_missing_fields_does_not_crash_reruns(tmp_path):
    dest = ObjectStoragePath(f"file://{tmp_path}/archive")
    with FakeObs({"worker-0": make_log(1000)}) as obs:
        TrainingJobLogArchiver(obs.source, dest).archive(job_body(tasks=["worker-0"]))
        manifest_file = tmp_path / "archive/job-1/manifest.json"
        manifest_file.write_text(json.dumps({"tasks": [{"task_id": "worker-0", "complete": True}]}))
        result = TrainingJobLogArchiver(obs.source, dest).archive(job_body(tasks=["worker-0"]))
    assert result.tasks[0].skipped  # the record, not the manifest, is what is trusted
    assert read_manifest(dest)["tasks"][0]["sha256"] == result.tasks[0].sha256


def test_shared_job_name_layout_does_not_trust_another_jobs_logs(tmp_path):
    dest = ObjectStoragePath(f"file://{tmp_path}/archive")
    layout = ArchiveLayout(
        path_template="{job_name}/{task_id}.log", manifest_template="{job_name}/manifest.json"
    )
    a, b = make_log(1000, seed=1), make_log(1000, seed=2)
    job_a = {
        "metadata": {"id": "job-a", "name": "shared"},
        "status": {"phase": "Completed", "tasks": ["worker-0"]},
    }
    job_b = {
        "metadata": {"id": "job-b", "name": "shared"},
        "status": {"phase": "Completed", "tasks": ["worker-0"]},
    }
    with FakeObs({"worker-0": a}) as obs:
        TrainingJobLogArchiver(obs.source, dest, layout=layout).archive(job_a)
        obs.logs["worker-0"] = b
        result = TrainingJobLogArchiver(obs.source, dest, layout=layout).archive(job_b)
        assert obs.links == 2 and not result.tasks[0].skipped
    assert (tmp_path / "archive/shared/worker-0.log").read_bytes() == b


def test_destination_that_is_a_file_gives_a_typed_error_naming_the_path(tmp_path):
    (tmp_path / "blocker").write_text("x")
    dest = ObjectStoragePath(f"file://{tmp_path}/blocker/archive")
    with FakeObs({"worker-0": make_log(1000)}) as obs, pytest.raises(ModelArtsArchiveDestinationError) as ei:
        TrainingJobLogArchiver(obs.source, dest).archive(job_body(tasks=["worker-0"]))
    assert "blocker/archive/job-1/manifest.json" in ei.value.path and "NotADirectoryError" in ei.value.cause
    # The log's own failure is named too.
    assert "worker-0 failed" in str(ei.value) and "blocker/archive/job-1/worker-0.log" in str(ei.value)


def test_manifest_that_cannot_be_written_names_the_committed_logs_and_a_rerun_finishes(tmp_path):
    dest = ObjectStoragePath(f"file://{tmp_path}/archive")
    layout = ArchiveLayout(manifest_template="{training_job_id}/m/manifest.json")
    logs = {t: make_log(1000, seed=i) for i, t in enumerate(TASKS[:2])}
    os.makedirs(tmp_path / "archive/job-1")
    (tmp_path / "archive/job-1/m").write_text("a file where the manifest's folder should be")
    with FakeObs(logs) as obs:
        with pytest.raises(ModelArtsArchiveDestinationError) as ei:
            TrainingJobLogArchiver(obs.source, dest, layout=layout).archive(job_body(tasks=logs))
        assert ei.value.committed == ["worker-0", "worker-1"]
        assert "worker-0" in str(ei.value) and "m/manifest.json" in str(ei.value) and ei.value.cause
        (tmp_path / "archive/job-1/m").unlink()
        result = TrainingJobLogArchiver(obs.source, dest, layout=layout).archive(job_body(tasks=logs))
        assert obs.links == 2 and all(t.skipped for t in result.tasks)
    manifest = json.loads((tmp_path / "archive/job-1/m/manifest.json").read_text())
    assert manifest["complete"] is True and len(manifest["tasks"]) == 2


def test_full_disk_while_writing_a_log_is_a_typed_error(tmp_path, monkeypatch):
    import errno

    from airflow_provider_modelarts.archiving import staging

    real_write = staging.StagedObject._write

    def full(self, data):
        if self.target.name.endswith(".log"):
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(self, data)

    monkeypatch.setattr(staging.StagedObject, "_write", full)
    dest = ObjectStoragePath(f"file://{tmp_path}/archive")
    with FakeObs({"worker-0": make_log(1000)}) as obs:
        with pytest.raises(ModelArtsLogTransferError, match="No space left") as ei:
            TrainingJobLogArchiver(obs.source, dest, max_attempts=5).archive(job_body(tasks=["worker-0"]))
        assert obs.links == 1  # not retried: the destination is not a transient link problem
    assert "worker-0.log" in str(ei.value)
    assert files_under(tmp_path / "archive") == ["job-1/manifest.json", "job-1/worker-0.log.record.json"]


def test_commit_keeps_the_staging_lock_until_the_rename(tmp_path):
    """A second archiver's stale-staging cleanup never deletes a staging file that is being committed."""
    import fcntl

    from airflow_provider_modelarts.archiving.staging import StagedObject

    staged = StagedObject(ObjectStoragePath(f"file://{tmp_path}/out/x.log"))
    staged.write(b"data")
    real_replace = os.replace
    seen = []

    def replace(src, dst):
        fd = os.open(src, os.O_WRONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            seen.append("unlocked")
        except BlockingIOError:
            seen.append("locked")
        finally:
            os.close(fd)
        real_replace(src, dst)

    os.replace = replace  # type: ignore[assignment]
    try:
        staged.commit()
    finally:
        os.replace = real_replace  # type: ignore[assignment]
    assert seen == ["locked"] and (tmp_path / "out/x.log").read_bytes() == b"data"
