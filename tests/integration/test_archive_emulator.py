"""The archive operator over real HTTP: the emulator (ModelArts + OBS links, with fault knobs) to file://,
s3:// (moto) and obs:// (moto through the OBS filesystem). Archived bytes must hash like the source."""

from __future__ import annotations

import gzip
import hashlib
import json

import pytest
from airflow.providers.common.compat.sdk import ObjectStoragePath

from airflow_provider_modelarts.exceptions import ModelArtsLogTransferError
from airflow_provider_modelarts.hooks.modelarts import ModelArtsHook
from airflow_provider_modelarts.transfer import archive_task_log
from tests.fixtures.archive_runs import run

pytestmark = pytest.mark.integration

MiB = 1024 * 1024
SCENARIO = {
    "jobs": [
        {
            "id": "job-big",
            "name": "big",
            "timeline": [{"phase": "Completed", "at": 0}],
            "tasks": [
                {"id": "worker-0", "exit_code": 0, "log": {"generate": {"size": 6 * MiB + 123, "seed": 11}}},
                {"id": "worker-1", "exit_code": 0, "log": {"generate": {"size": 3 * MiB + 7, "seed": 12}}},
                {"id": "worker-2", "exit_code": 1, "log": {"text": "short log\nfailed\n"}},
            ],
        },
        {
            "id": "job-failed",
            "name": "failed",
            "timeline": [{"phase": "Failed", "at": 0}],
            "tasks": [{"id": "worker-0", "exit_code": 1, "log": {"generate": {"size": 200_000, "seed": 5}}}],
        },
        {
            "id": "job-running",
            "name": "running",
            "timeline": [
                {"phase": "Pending", "at": 0},
                {"phase": "Running", "at": 0.5},
                {"phase": "Completed", "at": 2},
            ],
            "tasks": [{"id": "worker-0", "exit_code": 0, "log": {"generate": {"size": 500_000, "seed": 6}}}],
        },
    ]
}


@pytest.fixture
def emu(emulator_factory, monkeypatch):
    emu = emulator_factory(SCENARIO)
    monkeypatch.setenv("AIRFLOW_CONN_MODELARTS_DEFAULT", emu.connection_json())
    return emu


def assert_matches_source(emu, job_id, result, read):
    for t in result["tasks"]:
        data = read(t["uri"])
        assert len(data) == emu.log_size(job_id, t["task_id"]) == t["size"]
        assert hashlib.sha256(data).hexdigest() == emu.log_sha256(job_id, t["task_id"]) == t["sha256"]


def read_file_uri(uri: str) -> bytes:
    return ObjectStoragePath(uri).read_bytes()


def test_file_destination_clean_run(emu, tmp_path):
    result = run(training_job_id="job-big", destination=f"file://{tmp_path}/a")
    assert [t["task_id"] for t in result["tasks"]] == ["worker-0", "worker-1", "worker-2"]
    assert_matches_source(emu, "job-big", result, read_file_uri)
    manifest = json.loads((tmp_path / "a/job-big/manifest.json").read_text())
    assert manifest["complete"] and {e["content_length"] for e in manifest["tasks"]} == {
        emu.log_size("job-big", t) for t in ("worker-0", "worker-1", "worker-2")
    }
    assert emu.counters["obs_get"] == 3
    # a re-run downloads nothing
    emu.reset_counters()
    again = run(training_job_id="job-big", destination=f"file://{tmp_path}/a")
    assert again == result
    assert emu.counters["obs_get"] == 0 and emu.counters["log_url"] == 0


def test_file_destination_survives_drops_and_throttling(emu, tmp_path):
    emu.knobs.drop_after_bytes = 1 * MiB + 5
    emu.knobs.drop_downloads = 4
    emu.knobs.throttle_ratio = 0.25
    emu.knobs.retry_after = None
    result = run(training_job_id="job-big", destination=f"file://{tmp_path}/a", max_workers=3)
    assert_matches_source(emu, "job-big", result, read_file_uri)
    assert emu.counters["dropped"] == 4
    assert emu.counters["throttled"] >= 1
    # resumed, not restarted: at most one (partial) chunk re-sent per drop
    total = sum(emu.log_size("job-big", t) for t in ("worker-0", "worker-1", "worker-2"))
    assert emu.counters["bytes_served"] <= total + 4 * (1 * MiB + 5)
    manifest = json.loads((tmp_path / "a/job-big/manifest.json").read_text())
    assert sum(e["connections"] for e in manifest["tasks"]) >= 3 + 4  # one connection per task + one per drop


class ExpiringLinksHook(ModelArtsHook):
    """Lets every other fresh link expire before its first use, by moving the emulator's clock past it.

    Deterministic (no sleeping against a short link lifetime, which a loaded machine can overrun).
    """

    def __init__(self, emu, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.emu = emu
        self.opened = 0

    def open_log_stream(self, url, *, offset=0, timeout=None):
        self.opened += 1
        if self.opened % 2 == 1:
            self.emu.advance(self.emu.knobs.link_ttl + 1)
        return super().open_log_stream(url, offset=offset, timeout=timeout)


def test_expired_links_are_renewed_and_the_download_resumes(emu, tmp_path, caplog):
    emu.knobs.link_ttl = 60
    emu.knobs.drop_after_bytes = 2 * MiB
    emu.knobs.drop_downloads = 1
    hook = ExpiringLinksHook(emu)
    target = ObjectStoragePath(f"file://{tmp_path}/x/worker-0.log")
    res = archive_task_log(hook, "job-big", "worker-0", target, phase="Completed", max_attempts=6)
    data = (tmp_path / "x/worker-0.log").read_bytes()
    assert hashlib.sha256(data).hexdigest() == emu.log_sha256("job-big", "worker-0") == res.sha256
    # 1st GET: expired; 2nd: dropped at 2 MiB; 3rd: expired; 4th: resumes with Range
    assert res.connections == 4 and res.restarts == 0
    assert emu.counters["log_url"] == 4
    assert "expired" in caplog.text
    assert "Signature=" not in caplog.text


def test_range_ignored_restarts_cleanly(emu, tmp_path):
    emu.knobs.drop_after_bytes = 1 * MiB
    emu.knobs.drop_downloads = 1
    emu.knobs.ignore_range = True
    result = run(training_job_id="job-big", destination=f"file://{tmp_path}/a", task_ids=["worker-1"])
    assert_matches_source(emu, "job-big", result, read_file_uri)
    manifest = json.loads((tmp_path / "a/job-big/manifest.json").read_text())
    assert manifest["tasks"][0]["restarts"] == 1


def test_persistent_drops_fail_without_leaving_a_file(emu, tmp_path):
    emu.knobs.drop_after_bytes = 100_000
    emu.knobs.drop_downloads = 100
    with pytest.raises(ModelArtsLogTransferError, match="worker-0"):
        run(
            training_job_id="job-big",
            destination=f"file://{tmp_path}/a",
            task_ids=["worker-0"],
            max_attempts=2,
        )
    assert not (tmp_path / "a/job-big/worker-0.log").exists()
    names = sorted(p.name for p in (tmp_path / "a/job-big").iterdir())
    assert names == ["manifest.json", "worker-0.log.record.json"]
    manifest = json.loads((tmp_path / "a/job-big/manifest.json").read_text())
    assert manifest["complete"] is False
    (entry,) = manifest["tasks"]
    assert entry["task_id"] == "worker-0" and entry["complete"] is False and "Giving up" in entry["error"]


def test_failed_job_gzip(emu, tmp_path):
    result = run(training_job_id="job-failed", destination=f"file://{tmp_path}/a", compression="gzip")
    assert result["phase"] == "Failed"
    data = gzip.decompress((tmp_path / "a/job-failed/worker-0.log.gz").read_bytes())
    assert (
        hashlib.sha256(data).hexdigest()
        == emu.log_sha256("job-failed", "worker-0")
        == result["tasks"][0]["sha256"]
    )


def test_waits_for_a_running_job(emu, tmp_path):
    result = run(
        training_job_id="job-running", destination=f"file://{tmp_path}/a", poll_interval=0.3, timeout=60
    )
    assert result["phase"] == "Completed"
    assert_matches_source(emu, "job-running", result, read_file_uri)
    assert emu.counters["job"] >= 2


def test_s3_destination_on_moto_with_faults(emu, aws_s3_conn, s3_bucket):
    emu.knobs.drop_after_bytes = 2 * MiB + 1
    emu.knobs.drop_downloads = 2
    emu.knobs.throttle_ratio = 0.2
    emu.knobs.retry_after = None
    result = run(
        training_job_id="job-big",
        destination=f"s3://{s3_bucket}/archive",
        destination_conn_id=aws_s3_conn,
    )
    assert result["manifest"].endswith(f"{s3_bucket}/archive/job-big/manifest.json")
    assert_matches_source(
        emu, "job-big", result, lambda uri: ObjectStoragePath(uri, conn_id=aws_s3_conn).read_bytes()
    )
    names = sorted(
        p.name for p in ObjectStoragePath(f"s3://{s3_bucket}/archive/job-big", conn_id=aws_s3_conn).iterdir()
    )
    assert names == ["manifest.json"] + [
        f"worker-{i}.log{suffix}" for i in range(3) for suffix in ("", ".record.json")
    ]


def test_obs_destination_with_the_modelarts_connection(emu, moto_server, s3_bucket, monkeypatch):
    # obs:// defaults to the modelarts connection's AK/SK; obs_endpoint points it at moto (which accepts them).
    conn = json.loads(emu.connection_json())
    conn["extra"]["obs_endpoint"] = moto_server
    monkeypatch.setenv("AIRFLOW_CONN_MODELARTS_DEFAULT", json.dumps(conn))
    result = run(training_job_id="job-failed", destination=f"obs://{s3_bucket}/logs", compression="gzip")
    assert result["manifest"] == f"obs://modelarts_default@{s3_bucket}/logs/job-failed/manifest.json"
    obj = ObjectStoragePath(f"obs://{s3_bucket}/logs/job-failed/worker-0.log.gz", conn_id="modelarts_default")
    data = gzip.decompress(obj.read_bytes())
    assert hashlib.sha256(data).hexdigest() == emu.log_sha256("job-failed", "worker-0")
    manifest = json.loads(ObjectStoragePath(result["manifest"]).read_text())
    assert manifest["tasks"][0]["compression"] == "gzip"
    assert manifest["tasks"][0]["sha256"] == emu.log_sha256("job-failed", "worker-0")


def test_plain_bodies_are_read_into_page_aligned_buffers(emu):
    import mmap

    from airflow_provider_modelarts.archiving.checks import plan_response
    from airflow_provider_modelarts.archiving.pipeline import BodyReader

    hook = ModelArtsHook()
    resp = hook.open_log_stream(hook.get_task_log_url("job-big", "worker-1", download=True))
    plan = plan_response(resp.status_code, resp.headers, offset=0, known_total=None)
    digest, kinds, sizes = hashlib.sha256(), set(), []
    with resp:
        reader = BodyReader(resp, plan=plan, chunk_size=256 * 1024, on_read=lambda n: None)
        for chunk in reader.chunks():
            kinds.add(type(chunk))
            sizes.append(len(chunk))
            digest.update(chunk)
    assert kinds == {memoryview}
    assert all(size == 256 * 1024 for size in sizes[:-1]) and 256 * 1024 % mmap.PAGESIZE == 0
    assert digest.hexdigest() == emu.log_sha256("job-big", "worker-1")


def test_memory_stays_flat_for_a_large_log(emu, tmp_path):
    import tracemalloc

    hook = ModelArtsHook()

    def peak_for(task_id: str) -> int:
        target = ObjectStoragePath(f"file://{tmp_path}/m/{task_id}.log")
        tracemalloc.start()
        try:
            archive_task_log(hook, "job-big", task_id, target, phase="Completed", chunk_size=MiB)
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    peak_for("worker-2")  # warm-up: first-use imports allocate too
    small, big = peak_for("worker-1"), peak_for("worker-0")  # 3 MiB and 6 MiB logs
    # the traced peak (this process also runs the emulator) does not grow with the log size
    assert big < small + MiB, (small, big)
    assert big < 4 * MiB, (small, big)


@pytest.mark.parametrize("where", ["file", "s3"])
def test_mapped_runs_with_disjoint_task_ids_end_with_every_task_in_the_manifest(
    emu, tmp_path, where, request
):
    import threading

    if where == "s3":
        bucket, conn_id = request.getfixturevalue("s3_bucket"), request.getfixturevalue("aws_s3_conn")
        destination, root = (
            f"s3://{bucket}/archive",
            ObjectStoragePath(f"s3://{bucket}/archive", conn_id=conn_id),
        )
    else:
        conn_id, destination = None, f"file://{tmp_path}/a"
        root = ObjectStoragePath(destination)
    results, errors = {}, []

    def one(task_id):
        try:
            results[task_id] = run(
                training_job_id="job-big",
                destination=destination,
                destination_conn_id=conn_id,
                task_ids=[task_id],
            )
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=one, args=(f"worker-{i}",)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    manifest = json.loads((root / "job-big" / "manifest.json").read_bytes())
    assert [e["task_id"] for e in manifest["tasks"]] == ["worker-0", "worker-1", "worker-2"]
    assert manifest["complete"] is True
    for e in manifest["tasks"]:
        assert e["sha256"] == emu.log_sha256("job-big", e["task_id"])
