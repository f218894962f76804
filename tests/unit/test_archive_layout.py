"""Values from the API that reach paths: checked before any byte is written (property-based where it fits)."""

from __future__ import annotations

import os
import posixpath

import pytest
from airflow.providers.common.compat.sdk import ObjectStoragePath
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from airflow_provider_modelarts.archiving.layout import (
    ArchiveLayout,
    JobIdentity,
    job_identity,
    plan_paths,
)
from airflow_provider_modelarts.archiving.staging import NAME_MAX
from airflow_provider_modelarts.exceptions import ModelArtsUnexpectedJobError, ModelArtsValidationError
from airflow_provider_modelarts.training_job import TrainingJob
from airflow_provider_modelarts.transfer import TrainingJobLogArchiver
from tests.fixtures.fake_obs import FakeObs, files_under, make_log

NAME_LAYOUT = ArchiveLayout(
    path_template="{job_name}/{task_id}.log", manifest_template="{job_name}/manifest.json"
)


def body(job_id="job-1", name="n", tasks=("worker-0",), phase="Completed"):
    return {"metadata": {"id": job_id, "name": name}, "status": {"phase": phase, "tasks": list(tasks)}}


# Text that looks like what a hostile API could answer: separators, dots, control characters, long runs.
hostile = st.lists(st.sampled_from([*list("ab./\\.-_~ \t\n\x00%?#é\u202e"), "..", "../"]), max_size=40).map(
    "".join
) | st.text(max_size=300)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(job_id=hostile, name=hostile, tasks=st.lists(hostile | st.none() | st.integers(), max_size=5))
def test_any_answer_is_rejected_or_stays_inside_the_destination(job_id, name, tasks):
    job = body(job_id, name, tasks)
    try:
        identity = job_identity(job, requested=None, layout=NAME_LAYOUT)
        checked = TrainingJob.from_api(job).checked_tasks()
        paths, manifest = plan_paths(NAME_LAYOUT, identity, checked, compression=None)
    except ModelArtsValidationError:
        return
    every = [*paths.values(), manifest]
    for rel in every:
        norm = posixpath.normpath(rel)
        assert not norm.startswith("/") and not norm.startswith("..") and "\x00" not in norm
        assert all(len(seg.encode()) <= NAME_MAX for seg in norm.split("/"))
    assert len(set(every)) == len(every)
    assert len(set(checked)) == len(checked) == len(tasks)


@pytest.mark.parametrize("bad", ["../../x", "/abs", ".", "..", "a/b", "a\\b", "", None, 7])
def test_hostile_job_ids_are_rejected(bad):
    with pytest.raises(ModelArtsValidationError):
        job_identity(body(job_id=bad), requested=None, layout=ArchiveLayout())


@pytest.mark.parametrize("bad", ["../../x", "/abs", "..", "a/b", "x\ny"])
def test_hostile_job_names_are_rejected_when_a_template_uses_them(bad):
    with pytest.raises(ModelArtsValidationError, match=r"metadata\.name"):
        job_identity(body(name=bad), requested=None, layout=NAME_LAYOUT)
    # Not used in any path: recorded as is, no harm.
    assert job_identity(body(name=bad), requested=None, layout=ArchiveLayout()).job_name == bad


def test_the_job_answered_must_be_the_job_asked_for():
    with pytest.raises(ModelArtsUnexpectedJobError) as ei:
        job_identity(body(job_id="job-2"), requested="job-1", layout=ArchiveLayout())
    assert "job-1" in str(ei.value) and "job-2" in str(ei.value)
    assert ei.value.requested == "job-1" and ei.value.received == "job-2"


@pytest.mark.parametrize(
    ("tasks", "match"),
    [
        ([None], r"status.tasks\[0\]"),
        (["worker-0", "worker-0"], "twice"),
        (["../x"], r"status.tasks\[0\]"),
        ([3], "not a task name"),
        ("worker-0", "not a list"),
    ],
)
def test_bad_task_lists_are_rejected(tasks, match):
    job = body()
    job["status"]["tasks"] = tasks
    with pytest.raises(ModelArtsValidationError, match=match):
        TrainingJob.from_api(job).checked_tasks()


def test_a_task_colliding_with_the_manifest_is_rejected():
    layout = ArchiveLayout(
        path_template="{training_job_id}/{task_id}", manifest_template="{training_job_id}/m"
    )
    identity = JobIdentity("job-1", "n")
    with pytest.raises(ModelArtsValidationError, match="manifest"):
        plan_paths(layout, identity, ["w", "m"], compression=None)


def test_a_task_colliding_with_another_tasks_record_is_rejected():
    layout = ArchiveLayout(
        path_template="{training_job_id}/{task_id}", manifest_template="{training_job_id}/m"
    )
    with pytest.raises(ModelArtsValidationError, match="both"):
        plan_paths(layout, JobIdentity("job-1", "n"), ["w", "w.record.json"], compression=None)


def test_long_task_names_are_rejected_up_front_naming_the_limit():
    longest_ok = NAME_MAX - len(".record.json") - len("..") - 12 - len(".partial") - len(".log")
    plan_paths(ArchiveLayout(), JobIdentity("j", "j"), ["t" * longest_ok], compression=None)
    with pytest.raises(ModelArtsValidationError, match=f"{NAME_MAX} bytes"):
        plan_paths(ArchiveLayout(), JobIdentity("j", "j"), ["t" * (longest_ok + 1)], compression=None)


@pytest.mark.parametrize("length", [200, 230, 256])
def test_long_task_names_never_reach_the_file_system(tmp_path, length):
    task = "t" * length
    dest = ObjectStoragePath(f"file://{tmp_path}/archive")
    with FakeObs({task: make_log(100)}) as obs:
        archiver = TrainingJobLogArchiver(obs.source, dest)
        try:
            archiver.archive(body(tasks=[task]))
        except ModelArtsValidationError as e:
            assert str(NAME_MAX) in str(e)
            assert obs.links == 0 and not os.path.exists(tmp_path / "archive")
        else:
            assert files_under(tmp_path / "archive")


def test_hostile_body_writes_nothing_anywhere(tmp_path):
    dest = ObjectStoragePath(f"file://{tmp_path}/dest/archive")
    with FakeObs({"worker-0": make_log(100)}) as obs:
        for job in (
            body(name="../../x"),
            body(job_id="../../x"),
            body(tasks=["worker-0", None]),
            body(tasks=["worker-0", "worker-0"]),
        ):
            with pytest.raises(ModelArtsValidationError):
                TrainingJobLogArchiver(obs.source, dest, layout=NAME_LAYOUT).archive(job)
        with pytest.raises(ModelArtsUnexpectedJobError):
            TrainingJobLogArchiver(obs.source, dest).archive(body(job_id="job-2"), training_job_id="job-1")
        assert obs.links == 0
    assert files_under(tmp_path) == []
