"""The transfer engine against a fake OBS served through requests-mock: resume, restart, verification, atomicity."""

from __future__ import annotations

import fcntl
import gzip
import hashlib
import json
import logging
import os
import threading
import time

import pytest
from airflow.providers.common.compat.sdk import ObjectStoragePath

from airflow_provider_modelarts.exceptions import (
    ModelArtsApiError,
    ModelArtsAuthError,
    ModelArtsLogTransferError,
    ModelArtsTransportError,
    ModelArtsValidationError,
)
from airflow_provider_modelarts.transfer import (
    ArchiveLayout,
    TrainingJobLogArchiver,
    archive_task_log,
    redact_url,
)
from tests.fixtures.fake_hooks import fake_hook
from tests.fixtures.fake_obs import (
    FakeObs,
    FakeSource,
    FlakyLinkSource,
    api_503,
    files_under,
    job_body,
    make_log,
    run_one,
)


@pytest.fixture
def dest(tmp_path):
    return ObjectStoragePath(f"file://{tmp_path}/archive")


# ---------------------------------------------------------------------------------------------------------


def test_plain_copy_is_verified_and_leaves_no_staging_files(dest, tmp_path):
    data = make_log(3 * 1024 * 1024 + 17)
    with FakeObs({"worker-0": data}) as obs:
        res = run_one(obs, dest, chunk_size=64 * 1024)
    final = tmp_path / "archive" / "job-1" / "worker-0.log"
    assert final.read_bytes() == data
    assert res.size == len(data) == res.content_length == res.stored_size
    assert res.sha256 == hashlib.sha256(data).hexdigest() == res.stored_sha256
    assert res.connections == 1 and res.restarts == 0 and res.complete
    assert files_under(tmp_path / "archive") == ["job-1/worker-0.log"]
    assert [g["range"] for g in obs.gets] == [None]


def test_expired_link_gets_a_fresh_link_and_resumes_with_range(dest, tmp_path, caplog):
    data = make_log(500_000)
    with (
        FakeObs({"worker-0": data}, script=[("drop", 8192 * 25), "expired", "ok"]) as obs,
        caplog.at_level(logging.WARNING, logger="airflow_provider_modelarts.transfer"),
    ):
        res = run_one(obs, dest, chunk_size=8192)
    assert (tmp_path / "archive/job-1/worker-0.log").read_bytes() == data
    assert res.sha256 == hashlib.sha256(data).hexdigest()
    assert [g["range"] for g in obs.gets] == [None, "bytes=204800-", "bytes=204800-"]
    # a fresh link after the drop and after the expiry
    assert obs.links == 3
    assert len({g["url"] for g in obs.gets}) == 3
    # resumed, not restarted: nothing served twice
    assert obs.bytes_served == len(data)
    assert res.restarts == 0 and res.connections == 3
    assert "expired" in caplog.text and "dropped" in caplog.text
    assert "SECRETSIG" not in caplog.text and "Signature" not in caplog.text


def test_repeated_drops_resume_at_the_right_offsets(dest, tmp_path):
    data = make_log(1_000_000)
    # every byte that arrived before a drop is kept, even the one byte of the third connection
    script = [("drop", 4096 * 25), ("drop", 4096 * 61), ("drop", 1), "ok"]
    with FakeObs({"worker-0": data}, script=script) as obs:
        res = run_one(obs, dest, chunk_size=4096)
    assert [g["range"] for g in obs.gets] == [None, "bytes=102400-", "bytes=352256-", "bytes=352257-"]
    assert (tmp_path / "archive/job-1/worker-0.log").read_bytes() == data
    assert res.sha256 == hashlib.sha256(data).hexdigest()
    assert obs.bytes_served <= len(data) + 1


def test_short_read_is_detected_and_resumed(dest, tmp_path):
    data = make_log(300_000)
    with FakeObs({"worker-0": data}, script=[("short", 123_456), "ok"]) as obs:
        res = run_one(obs, dest)
    assert [g["range"] for g in obs.gets] == [None, "bytes=123456-"]
    assert (tmp_path / "archive/job-1/worker-0.log").read_bytes() == data
    assert res.size == len(data)


def test_range_ignored_restarts_the_file_cleanly(dest, tmp_path, caplog):
    data = make_log(400_000)
    with (
        FakeObs({"worker-0": data}, script=[("drop", 150_000), "ignore_range"]) as obs,
        caplog.at_level(logging.WARNING, logger="airflow_provider_modelarts.archiving.log_copy"),
    ):
        res = run_one(obs, dest, chunk_size=10_000)
    assert (tmp_path / "archive/job-1/worker-0.log").read_bytes() == data
    assert res.sha256 == hashlib.sha256(data).hexdigest()
    assert res.size == len(data)
    assert res.restarts == 1
    assert "ignored Range" in caplog.text
    assert files_under(tmp_path / "archive") == ["job-1/worker-0.log"]


def test_range_ignored_with_gzip_restarts_compressor_too(dest, tmp_path):
    data = make_log(400_000)
    with FakeObs({"worker-0": data}, script=[("drop", 150_000), "ignore_range"]) as obs:
        res = archive_task_log(
            obs.source(),
            "job-1",
            "worker-0",
            dest / "job-1/worker-0.log.gz",
            phase="Failed",
            compression="gzip",
        )
    stored = (tmp_path / "archive/job-1/worker-0.log.gz").read_bytes()
    assert gzip.decompress(stored) == data
    assert res.stored_size == len(stored) and res.stored_sha256 == hashlib.sha256(stored).hexdigest()


def test_size_mismatch_every_time_gives_up_and_leaves_nothing(dest, tmp_path, caplog):
    data = make_log(100_000)
    with (
        FakeObs({"worker-0": data}, script=[("short", 10)] * 50) as obs,
        pytest.raises(ModelArtsLogTransferError, match="Giving up"),
    ):
        run_one(obs, dest, max_attempts=3)
    # first request + 3 tolerated interruptions, then the 4th interruption gives up
    assert len(obs.gets) == 4
    assert files_under(tmp_path / "archive") == []


def test_resume_total_mismatch_on_a_final_log_restarts(dest, tmp_path):
    data = make_log(50_000)
    with FakeObs({"worker-0": data}, script=[("drop", 1000), ("range_total", 99_999)]) as obs:
        res = run_one(obs, dest, chunk_size=1000)
    assert (tmp_path / "archive/job-1/worker-0.log").read_bytes() == data
    assert res.restarts == 1
    assert [g["range"] for g in obs.gets] == [None, "bytes=1000-", None]


def test_always_expired_gives_up_after_bounded_attempts(dest, tmp_path):
    with (
        FakeObs({"worker-0": b"abc"}, script=["expired"] * 20) as obs,
        pytest.raises(ModelArtsLogTransferError, match="after 5 interruptions"),
    ):
        run_one(obs, dest, max_attempts=4)
    assert obs.links == 5
    assert not (tmp_path / "archive").exists() or files_under(tmp_path / "archive") == []


def test_failure_midway_discards_the_staged_file(dest, tmp_path):
    data = make_log(200_000)
    with (
        FakeObs({"worker-0": data}, script=[("drop", 50_000)] * 3) as obs,
        pytest.raises(ModelArtsLogTransferError),
    ):
        run_one(obs, dest, max_attempts=2, chunk_size=4096)
    assert files_under(tmp_path / "archive") == []


def test_gzip_records_original_and_stored_checksums(dest, tmp_path):
    data = make_log(2_000_000)
    with FakeObs({"worker-0": data}) as obs:
        res = archive_task_log(
            obs.source(), "job-1", "worker-0", dest / "x.log.gz", phase="Completed", compression="gzip"
        )
    stored = (tmp_path / "archive/x.log.gz").read_bytes()
    assert gzip.decompress(stored) == data
    assert res.size == len(data) and res.sha256 == hashlib.sha256(data).hexdigest()
    assert res.stored_size == len(stored) < len(data)
    assert res.stored_sha256 == hashlib.sha256(stored).hexdigest()


def test_empty_log(dest, tmp_path):
    with FakeObs({"worker-0": b""}) as obs:
        res = run_one(obs, dest)
    assert (tmp_path / "archive/job-1/worker-0.log").read_bytes() == b""
    assert res.size == 0 and res.sha256 == hashlib.sha256(b"").hexdigest()


def test_progress_is_logged_with_rate_and_eta(dest, caplog):
    data = make_log(200_000)
    ticks = iter(range(10_000))
    with (
        FakeObs({"worker-0": data}) as obs,
        caplog.at_level(logging.INFO, logger="airflow_provider_modelarts.transfer"),
    ):
        run_one(obs, dest, chunk_size=10_000, progress_interval=5, clock=lambda: float(next(ticks)))
    progress = [r.getMessage() for r in caplog.records if "ETA" in r.getMessage()]
    assert progress, caplog.text
    assert "MB/s" in progress[0] and "%" in progress[0]
    assert any("archived" in r.getMessage() and "sha256" in r.getMessage() for r in caplog.records)


def test_redact_url_strips_signature():
    assert redact_url("https://b.obs.x.com/a/b.log?AccessKeyId=A&Signature=S%3D&Expires=1") == (
        "https://b.obs.x.com/a/b.log"
    )


def test_rejects_unknown_compression(dest):
    with pytest.raises(ModelArtsValidationError, match="compression"):
        archive_task_log(FakeSource(FakeObs({})), "j", "t", dest / "x", phase="Completed", compression="zstd")


# ---------------------------------------------------------------------------------------------------------
# whole job: manifest, skip / overwrite, concurrency


def test_job_archive_writes_layout_and_manifest(dest, tmp_path):
    logs = {f"worker-{i}": make_log(100_000 + i, seed=i) for i in range(5)}
    with FakeObs(logs) as obs:
        archiver = TrainingJobLogArchiver(obs.source, dest, max_workers=3)
        res = archiver.archive(job_body(phase="Failed", tasks=logs))
    assert obs.sources_made <= 3
    assert files_under(tmp_path / "archive") == ["job-1/manifest.json"] + [
        f"job-1/{t}.log{suffix}" for t in sorted(logs) for suffix in ("", ".record.json")
    ]
    manifest = json.loads((tmp_path / "archive/job-1/manifest.json").read_text())
    assert manifest["phase"] == "Failed" and manifest["complete"] is True
    by_task = {e["task_id"]: e for e in manifest["tasks"]}
    for t, data in logs.items():
        e = by_task[t]
        assert e["size"] == len(data) and e["sha256"] == hashlib.sha256(data).hexdigest()
        assert e["uri"] == str(dest / "job-1" / f"{t}.log")
        assert e["phase"] == "Failed" and e["complete"] is True and e["archived_at"]
        assert e["content_length"] == len(data)
    xcom = res.to_xcom()
    assert xcom["training_job_id"] == "job-1" and xcom["phase"] == "Failed"
    assert xcom["manifest"] == str(dest / "job-1" / "manifest.json")
    assert [t["task_id"] for t in xcom["tasks"]] == list(logs)
    assert set(xcom["tasks"][0]) == {"task_id", "uri", "size", "sha256"}


def test_rerun_skips_intact_tasks_and_overwrite_forces(dest, tmp_path):
    logs = {"worker-0": make_log(10_000), "worker-1": make_log(20_000, seed=1)}
    with FakeObs(logs) as obs:
        TrainingJobLogArchiver(obs.source, dest).archive(job_body(tasks=logs))
        assert obs.links == 2
        again = TrainingJobLogArchiver(obs.source, dest).archive(job_body(tasks=logs))
        assert obs.links == 2, "an intact archive must not be downloaded again"
        assert all(t.skipped for t in again.tasks)
        assert again.tasks[1].sha256 == hashlib.sha256(logs["worker-1"]).hexdigest()
        # a damaged object (wrong size) is archived again
        (tmp_path / "archive/job-1/worker-1.log").write_bytes(b"truncated")
        TrainingJobLogArchiver(obs.source, dest).archive(job_body(tasks=logs))
        assert obs.links == 3
        assert (tmp_path / "archive/job-1/worker-1.log").read_bytes() == logs["worker-1"]
        TrainingJobLogArchiver(obs.source, dest, overwrite=True).archive(job_body(tasks=logs))
        assert obs.links == 5


def test_running_job_is_marked_incomplete_and_rearchived_later(dest, tmp_path):
    logs = {"worker-0": make_log(1000)}
    with FakeObs(logs) as obs:
        TrainingJobLogArchiver(obs.source, dest).archive(job_body(phase="Running", tasks=logs))
        manifest = json.loads((tmp_path / "archive/job-1/manifest.json").read_text())
        assert manifest["complete"] is False and manifest["tasks"][0]["complete"] is False
        logs["worker-0"] = make_log(2000)
        TrainingJobLogArchiver(obs.source, dest).archive(job_body(phase="Completed", tasks=logs))
    manifest = json.loads((tmp_path / "archive/job-1/manifest.json").read_text())
    assert manifest["complete"] is True and manifest["tasks"][0]["size"] == 2000
    assert obs.links == 2


def test_unknown_task_id_lists_the_jobs_tasks(dest):
    with FakeObs({}) as obs, pytest.raises(ModelArtsValidationError, match=r"worker-9.*worker-0.*worker-1"):
        TrainingJobLogArchiver(obs.source, dest).archive(
            job_body(tasks=["worker-0", "worker-1"]), task_ids=["worker-9"]
        )


def test_subset_of_tasks_keeps_other_manifest_entries(dest, tmp_path):
    logs = {"worker-0": make_log(10), "worker-1": make_log(20)}
    with FakeObs(logs) as obs:
        TrainingJobLogArchiver(obs.source, dest).archive(job_body(tasks=logs), task_ids=["worker-0"])
        TrainingJobLogArchiver(obs.source, dest).archive(job_body(tasks=logs), task_ids=["worker-1"])
    manifest = json.loads((tmp_path / "archive/job-1/manifest.json").read_text())
    assert [e["task_id"] for e in manifest["tasks"]] == ["worker-0", "worker-1"]


def test_a_failed_overwrite_keeps_the_good_archive_and_its_record(dest, tmp_path):
    logs = {"worker-0": make_log(10_000)}
    with FakeObs(logs) as obs:
        TrainingJobLogArchiver(obs.source, dest).archive(job_body(tasks=logs))
    record = (tmp_path / "archive/job-1/worker-0.log.record.json").read_text()
    with FakeObs(logs, script=["expired"] * 10) as obs:
        archiver = TrainingJobLogArchiver(obs.source, dest, overwrite=True, max_attempts=2)
        with pytest.raises(ModelArtsLogTransferError, match="worker-0"):
            archiver.archive(job_body(tasks=logs))
    # The record is read after the failure (not before the copy) and a good one is not replaced.
    assert (tmp_path / "archive/job-1/worker-0.log.record.json").read_text() == record
    assert (tmp_path / "archive/job-1/worker-0.log").read_bytes() == logs["worker-0"]
    manifest = json.loads((tmp_path / "archive/job-1/manifest.json").read_text())
    assert manifest["complete"] is True and manifest["tasks"][0]["complete"] is True


def _job_1_writer(dest, targets):
    """The manifest writer of the completed ``job-1`` with ``targets``."""
    from airflow_provider_modelarts.archiving import records

    return records.ManifestWriter(
        manifest_path=dest / "job-1" / "manifest.json",
        training_job_id="job-1",
        job_name="job-1",
        phase="Completed",
        terminal=True,
        targets=targets,
        compression=None,
        layout={},
    )


def test_manifest_records_are_read_in_parallel(dest, tmp_path, monkeypatch):
    from airflow_provider_modelarts.archiving import records

    logs = {f"worker-{i}": make_log(100, seed=i) for i in range(24)}
    with FakeObs(logs) as obs:
        TrainingJobLogArchiver(obs.source, dest, max_workers=4).archive(job_body(tasks=logs))
    expected = json.loads((tmp_path / "archive/job-1/manifest.json").read_text())["tasks"]
    active, most, lock = [0], [0], threading.Lock()
    read_record = records.read_record

    def slow_read(target):  # an object store's round trip
        with lock:
            active[0] += 1
            most[0] = max(most[0], active[0])
        time.sleep(0.05)
        try:
            return read_record(target)
        finally:
            with lock:
                active[0] -= 1

    monkeypatch.setattr(records, "read_record", slow_read)
    targets = {t: dest / "job-1" / f"{t}.log" for t in logs}
    writer = _job_1_writer(dest, targets)
    entries = writer.collect()
    assert [entries[t] for t in sorted(entries)] == expected
    assert most[0] == records.COLLECT_WORKERS


def _manifest_io(monkeypatch):
    """Count the records read and the manifests written while a job is archived."""
    from airflow_provider_modelarts.archiving import records

    reads, manifests, lock = [], [], threading.Lock()
    read_record, write_bytes = records.read_record, records.write_bytes_atomically

    def counting_read(target):
        with lock:
            reads.append(target.name)
        return read_record(target)

    def counting_write(path, payload):
        if path.name == "manifest.json":
            manifests.append(json.loads(payload))
        return write_bytes(path, payload)

    monkeypatch.setattr(records, "read_record", counting_read)
    monkeypatch.setattr(records, "write_bytes_atomically", counting_write)
    return reads, manifests


def test_the_manifest_reads_back_only_to_check_the_records_the_run_wrote(dest, tmp_path, monkeypatch):
    logs = {f"worker-{i}": make_log(100, seed=i) for i in range(5)}
    reads, manifests = _manifest_io(monkeypatch)
    with FakeObs(logs) as obs:
        TrainingJobLogArchiver(obs.source, dest, overwrite=True).archive(job_body(tasks=logs))
    # The first rebuild takes this run's records as written; the check after the write reads each once.
    assert sorted(reads) == sorted(f"{t}.log" for t in logs)
    assert len(manifests) == 1
    on_disk = json.loads((tmp_path / "archive/job-1/manifest.json").read_text())
    assert on_disk == manifests[0] and [e["task_id"] for e in on_disk["tasks"]] == sorted(logs)
    for entry in on_disk["tasks"]:
        record = json.loads((tmp_path / f"archive/job-1/{entry['task_id']}.log.record.json").read_text())
        assert record["entry"] == entry


def test_a_record_changed_after_this_run_wrote_it_is_caught_by_the_check(dest, tmp_path, monkeypatch):
    from airflow_provider_modelarts.archiving import records

    logs = {"worker-0": make_log(100), "worker-1": make_log(200, seed=1)}
    with FakeObs(logs) as obs:
        TrainingJobLogArchiver(obs.source, dest).archive(job_body(tasks=logs))
    _, manifests = _manifest_io(monkeypatch)
    targets = {t: dest / "job-1" / f"{t}.log" for t in logs}
    on_disk = records.read_record(targets["worker-0"])["entry"]
    # What this run believes it wrote, while another run has since replaced the record.
    stale = {"worker-0": {**on_disk, "archived_at": "2000-01-01T00:00:00+00:00"}}
    writer = _job_1_writer(dest, targets)
    final = writer.write(stale)
    assert len(manifests) == 2
    assert manifests[0]["tasks"][0]["archived_at"] == "2000-01-01T00:00:00+00:00"
    assert final["tasks"][0] == on_disk
    assert json.loads((tmp_path / "archive/job-1/manifest.json").read_text()) == final


def test_one_failed_task_fails_the_job_but_keeps_the_rest(dest, tmp_path):
    logs = {"worker-0": make_log(10_000), "worker-1": make_log(10_000, seed=1)}
    with FakeObs(logs, script=["ok"] + ["expired"] * 10) as obs:
        archiver = TrainingJobLogArchiver(obs.source, dest, max_workers=1, max_attempts=2)
        with pytest.raises(ModelArtsLogTransferError, match="worker-1"):
            archiver.archive(job_body(tasks=logs))
    manifest = json.loads((tmp_path / "archive/job-1/manifest.json").read_text())
    assert manifest["complete"] is False
    by_task = {e["task_id"]: e for e in manifest["tasks"]}
    assert by_task["worker-0"]["complete"] is True
    assert by_task["worker-1"]["complete"] is False and "Giving up" in by_task["worker-1"]["error"]
    assert "Signature" not in json.dumps(manifest)
    assert files_under(tmp_path / "archive") == [
        "job-1/manifest.json",
        "job-1/worker-0.log",
        "job-1/worker-0.log.record.json",
        "job-1/worker-1.log.record.json",
    ]


def test_custom_layout_and_gzip(dest, tmp_path):
    logs = {"worker-0": make_log(5000)}
    layout = ArchiveLayout(
        path_template="{job_name}/logs/{task_id}.txt", manifest_template="{job_name}/m.json"
    )
    with FakeObs(logs) as obs:
        TrainingJobLogArchiver(obs.source, dest, layout=layout, compression="gzip").archive(
            job_body(tasks=logs)
        )
    assert files_under(tmp_path / "archive") == [
        "name-job-1/logs/worker-0.txt.gz",
        "name-job-1/logs/worker-0.txt.gz.record.json",
        "name-job-1/m.json",
    ]


@pytest.mark.parametrize(
    "template", ["{training_job_id}.log", "{task_id}/{secret}.log", "/abs/{task_id}.log", "../{task_id}.log"]
)
def test_layout_validation(template):
    with pytest.raises(ModelArtsValidationError):
        ArchiveLayout(path_template=template)


def test_stale_staging_files_of_a_killed_run_are_removed_but_live_ones_kept(dest, tmp_path):
    job_dir = tmp_path / "archive" / "job-1"
    job_dir.mkdir(parents=True)
    stale = job_dir / ".worker-0.log.0123456789ab.partial"
    stale.write_bytes(b"x" * 1000)  # left by a SIGKILLed run: nobody holds its lock
    live = job_dir / ".worker-0.log.ba9876543210.partial"
    live.write_bytes(b"y" * 10)
    other = job_dir / ".worker-0.log.x.log.0123456789ab.partial"  # another task's name
    other.write_bytes(b"z")
    data = make_log(100_000)
    with open(live, "ab") as holder:
        fcntl.flock(holder.fileno(), fcntl.LOCK_EX)  # a copy still in progress elsewhere
        with FakeObs({"worker-0": data}) as obs:
            run_one(obs, dest, chunk_size=64 * 1024)
        assert not stale.exists()
        assert live.read_bytes() == b"y" * 10
        assert other.exists()
    assert (job_dir / "worker-0.log").read_bytes() == data
    assert sorted(p.name for p in job_dir.iterdir()) == sorted(["worker-0.log", live.name, other.name])


def test_staging_file_is_locked_while_written(dest, tmp_path):
    data = make_log(300_000)
    seen: list[bool] = []

    class Probe(FakeSource):
        def open_log_stream(self, url, *, offset=0, timeout=None):
            resp = super().open_log_stream(url, offset=offset, timeout=timeout)
            for p in (tmp_path / "archive" / "job-1").glob(".*.partial"):
                with open(p, "ab") as fh:
                    try:
                        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                        seen.append(False)
                    except BlockingIOError:
                        seen.append(True)
            return resp

    with FakeObs({"worker-0": data}, script=[("drop", 100_000)]) as obs:
        archive_task_log(
            Probe(obs),
            "job-1",
            "worker-0",
            dest / "job-1" / "worker-0.log",
            phase="Completed",
            chunk_size=16 * 1024,
        )
    assert seen == [True]  # the second connection finds the first one's staging file locked


def test_link_api_error_after_the_hooks_retries_fails_at_once(dest, tmp_path):
    """Transport retries are the hook's: a 5xx that outlasted them is not retried again by the archive."""
    data = make_log(400_000)
    with FakeObs({"worker-0": data}, script=[("drop", 150_000)]) as obs:
        src = FlakyLinkSource(obs, [api_503(), api_503()])
        with pytest.raises(ModelArtsApiError, match="503"):
            archive_task_log(
                fake_hook(src),
                "job-1",
                "worker-0",
                dest / "job-1" / "worker-0.log",
                phase="Completed",
                chunk_size=16 * 1024,
            )
    assert src.calls == 2  # the first link, then the refresh after the drop: refused, no more
    assert files_under(tmp_path / "archive") == []


@pytest.mark.parametrize(
    "error",
    [
        ModelArtsAuthError("denied", status_code=403, error_code="ModelArts.0003"),
        ModelArtsApiError("not found", status_code=404),
        ModelArtsAuthError("unauthorised", status_code=401),
        ModelArtsTransportError("connection refused"),
    ],
)
def test_link_api_errors_fail_at_once(dest, tmp_path, error):
    data = make_log(200_000)
    with FakeObs({"worker-0": data}, script=[("drop", 50_000)]) as obs:
        src = FlakyLinkSource(obs, [error, api_503()])
        with pytest.raises(type(error)):
            archive_task_log(
                fake_hook(src), "job-1", "worker-0", dest / "job-1" / "worker-0.log", phase="Completed"
            )
    assert src.calls == 2
    assert files_under(tmp_path / "archive") == []


def test_log_store_5xx_after_hook_retries_fails_at_once(dest, tmp_path):
    data = make_log(200_000)

    class Flaky503Store(FakeSource):
        opened = 0

        def open_log_stream(self, url, *, offset=0, timeout=None):
            Flaky503Store.opened += 1
            if Flaky503Store.opened == 2:
                raise ModelArtsApiError("OBS answered 503", status_code=503, error_code="ServiceUnavailable")
            return super().open_log_stream(url, offset=offset, timeout=timeout)

    with FakeObs({"worker-0": data}, script=[("drop", 60_000)]) as obs:
        with pytest.raises(ModelArtsApiError, match="503"):
            archive_task_log(
                Flaky503Store(obs),
                "job-1",
                "worker-0",
                dest / "job-1" / "worker-0.log",
                phase="Completed",
                chunk_size=16 * 1024,
            )
        assert obs.links == 2
    assert files_under(tmp_path / "archive") == []


class _SpyFile:
    def __init__(self, fh):
        self.fh = fh
        self.writes: list[int] = []

    def write(self, b):
        self.writes.append(len(b))
        return self.fh.write(b)

    def fileno(self):
        return self.fh.fileno()

    def close(self):
        self.fh.close()


def _direct_flag(staged) -> bool:
    import fcntl

    return bool(fcntl.fcntl(staged._fh.fileno(), fcntl.F_GETFL) & getattr(os, "O_DIRECT", 0))


def test_local_staging_writes_aligned_blocks_around_the_page_cache_then_falls_back(tmp_path):
    import mmap

    from airflow_provider_modelarts.archiving.staging import DIRECT_IO_ALIGN, StagedObject

    staged = StagedObject(ObjectStoragePath(f"file://{tmp_path}/out/d.log"))
    try:
        if not staged._direct:
            pytest.skip("this file system does not take direct writes")
        block = mmap.mmap(-1, 2 * DIRECT_IO_ALIGN)
        block.write(b"x" * len(block))
        staged.write(memoryview(block))
        assert staged._direct and _direct_flag(staged)
        staged.write(b"tail")  # not a whole block: page cache from here on
        assert not staged._direct and not _direct_flag(staged)
        staged.write(memoryview(block))
        staged.commit()
    finally:
        staged.discard()
    assert (tmp_path / "out" / "d.log").read_bytes() == b"x" * 8192 + b"tail" + b"x" * 8192


def test_local_staging_uses_the_page_cache_on_network_and_memory_file_systems(tmp_path, monkeypatch):
    from airflow_provider_modelarts.archiving import staging as transfer

    for fs_type in ("nfs4", "tmpfs", "fuse.sshfs", None):
        monkeypatch.setattr(transfer, "_fs_type", lambda path, t=fs_type: t)
        staged = transfer.StagedObject(ObjectStoragePath(f"file://{tmp_path}/out/n.log"))
        try:
            assert not staged._direct and not _direct_flag(staged)
            staged.write(b"z" * 8192)
            staged.commit()
        finally:
            staged.discard()
        assert (tmp_path / "out" / "n.log").read_bytes() == b"z" * 8192


def test_local_staging_opens_without_direct_io_when_the_kernel_refuses_it(tmp_path, monkeypatch):
    import errno

    from airflow_provider_modelarts.archiving import staging as transfer

    monkeypatch.setattr(transfer, "_fs_type", lambda path: "ext4")
    real_open = os.open

    def no_direct(path, flags, *args):
        if flags & getattr(os, "O_DIRECT", 0):
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, *args)

    monkeypatch.setattr(transfer.os, "open", no_direct)
    staged = transfer.StagedObject(ObjectStoragePath(f"file://{tmp_path}/out/r.log"))
    try:
        assert not staged._direct
        staged.write(b"q" * 4096)
        staged.commit()
    finally:
        staged.discard()
    assert (tmp_path / "out" / "r.log").read_bytes() == b"q" * 4096


def test_local_staging_refused_direct_write_is_written_through_the_page_cache(tmp_path):
    from airflow_provider_modelarts.archiving.staging import DIRECT_IO_ALIGN, StagedObject

    staged = StagedObject(ObjectStoragePath(f"file://{tmp_path}/out/e.log"))
    # A bytes object's data is never page-aligned, so the kernel refuses it for direct I/O (EINVAL).
    data = bytes(range(256)) * (2 * DIRECT_IO_ALIGN // 256)
    try:
        staged.write(data)
        staged.write(data)
        staged.commit()
    finally:
        staged.discard()
    assert (tmp_path / "out" / "e.log").read_bytes() == data + data


def test_local_staging_writes_reach_the_file_at_once_in_slices(tmp_path):
    from airflow_provider_modelarts.archiving.staging import LOCAL_WRITE_SLICE, StagedObject

    staged = StagedObject(ObjectStoragePath(f"file://{tmp_path}/out/w.log"))
    staged._fh = spy = _SpyFile(staged._fh)
    try:
        staged.write(b"a" * 100)
        (partial,) = (tmp_path / "out").glob(".w.log.*.partial")
        assert partial.stat().st_size == 100  # unbuffered: no bytes wait in a user-space buffer
        staged.write(memoryview(b"b" * (3 * LOCAL_WRITE_SLICE + 5)))
        assert partial.stat().st_size == 100 + 3 * LOCAL_WRITE_SLICE + 5
        assert spy.writes == [100, LOCAL_WRITE_SLICE, LOCAL_WRITE_SLICE, LOCAL_WRITE_SLICE, 5]
        staged.commit()
    finally:
        staged.discard()
    assert (tmp_path / "out" / "w.log").read_bytes() == b"a" * 100 + b"b" * (3 * LOCAL_WRITE_SLICE + 5)
