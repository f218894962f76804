"""Bounded in time: a task timeout (SIGALRM in the main thread, as Airflow raises it) or a kill
(``on_kill``) stops the archive: running copies stop at their next read, queued ones never start, nothing
is committed after the stop and no staging file is left."""

from __future__ import annotations

import os
import threading

import pytest
from airflow.providers.common.compat.sdk import AirflowTaskTimeout, ObjectStoragePath
from airflow.sdk.execution_time.timeout import timeout

from airflow_provider_modelarts.archiving.log_copy import LogCopy, StopSignal
from airflow_provider_modelarts.exceptions import ModelArtsArchiveStoppedError
from airflow_provider_modelarts.transfer import TrainingJobLogArchiver
from tests.reliability._link_server import DATA, HookLinkSource, LinkServer, Reply, make_hook, serve_range

TASKS = [f"worker-{i}" for i in range(10)]
JOB = {"metadata": {"id": "job-1", "name": "n"}, "status": {"phase": "Completed", "tasks": TASKS}}


def _archive_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(("modelarts-archive", "modelarts-sha256"))]


def _files(root) -> list[str]:
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)


@pytest.fixture
def slow_server():
    # 2 KB/s: a log takes about a minute; the stall check is off so only the stop can end it.
    with LinkServer(lambda req: Reply(body=DATA, trickle=0.05, piece=100)) as srv:
        yield srv


def _archiver(monkeypatch, server, tmp_path):
    hook = make_hook(monkeypatch)
    return TrainingJobLogArchiver(
        lambda: HookLinkSource(hook, server),
        ObjectStoragePath(f"file://{tmp_path}/archive"),
        max_workers=2,
        stall_min_rate=0,
        chunk_size=16 * 1024,
    )


def test_task_timeout_stops_running_copies_and_never_starts_queued_ones(slow_server, tmp_path, monkeypatch):
    archiver = _archiver(monkeypatch, slow_server, tmp_path)
    with pytest.raises(AirflowTaskTimeout), timeout(1):
        archiver.archive(JOB, training_job_id="job-1")
    for t in _archive_threads():
        t.join(timeout=10)
    assert _archive_threads() == []
    assert len(slow_server.gets()) == 2  # the two running copies; the eight queued never asked
    assert _files(tmp_path / "archive") == []  # nothing committed, no staging file, no record


def test_on_kill_stops_the_archive(slow_server, tmp_path, monkeypatch):
    archiver = _archiver(monkeypatch, slow_server, tmp_path)
    threading.Timer(0.5, archiver.stop).start()
    with pytest.raises(ModelArtsArchiveStoppedError):
        archiver.archive(JOB, training_job_id="job-1")
    for t in _archive_threads():
        t.join(timeout=10)
    assert len(slow_server.gets()) == 2
    assert not [f for f in _files(tmp_path / "archive") if f.endswith((".log", ".partial"))]


def test_operator_on_kill_reaches_the_running_archive(slow_server, tmp_path, monkeypatch):
    from airflow_provider_modelarts.operators.modelarts import ModelArtsArchiveTaskLogsOperator

    hook = make_hook(monkeypatch)
    op = ModelArtsArchiveTaskLogsOperator(
        task_id="archive",
        training_job_id="job-1",
        destination=f"file://{tmp_path}/archive",
        max_workers=2,
        stall_min_rate=0,
    )
    op.new_hook = lambda: HookLinkSource(hook, slow_server)  # type: ignore[method-assign]
    destination, layout, task_ids = op._validate()
    threading.Timer(0.5, op.on_kill).start()
    with pytest.raises(ModelArtsArchiveStoppedError):
        op._archive({}, JOB, destination, layout, task_ids)  # type: ignore[arg-type]
    assert len(slow_server.gets()) == 2


def test_nothing_is_committed_once_stopped(tmp_path, monkeypatch):
    stop = StopSignal()
    with LinkServer(lambda req: serve_range(DATA, req)) as server:
        hook = make_hook(monkeypatch)

        class StopsAfterOpening(HookLinkSource):
            def open_log_stream(self, url, *, offset=0, timeout=None):
                resp = super().open_log_stream(url, offset=offset, timeout=timeout)
                stop.stop()  # the stop arrives while the last bytes are read
                return resp

        target = ObjectStoragePath(f"file://{tmp_path}/a/job-1/worker-0.log")
        copy = LogCopy(
            StopsAfterOpening(hook, server), "job-1", "worker-0", target, phase="Completed", stop=stop
        )
        with pytest.raises(ModelArtsArchiveStoppedError):
            copy.run()
    assert [f for f in _files(tmp_path) if "worker-0" in f] == []
