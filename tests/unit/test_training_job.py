"""TrainingJob: one checked view of a job body; hostile values never pass as ids, phases or times."""

from __future__ import annotations

import pytest

from airflow_provider_modelarts.exceptions import (
    ModelArtsResponseError,
    ModelArtsUnexpectedJobError,
    ModelArtsValidationError,
)
from airflow_provider_modelarts.states import (
    DEFAULT_FAILURE_PHASES,
    DEFAULT_SUCCESS_PHASES,
    TrainingJobPhase,
    evaluate_phase,
)
from airflow_provider_modelarts.training_job import TrainingJob

NOW_MS = 1_700_000_000_000


def body(**status):
    return {
        "metadata": {"id": "job-1", "name": "train", "create_time": NOW_MS},
        "status": {"phase": "Failed", "tasks": ["worker-0", "worker-1"], **status},
    }


def test_reads_the_documented_fields():
    job = TrainingJob.from_api(
        body(
            secondary_phase="FailedOOM",
            task_statuses=[
                {"task": "worker-0", "exit_code": 0},
                {"task": "worker-1", "exit_code": 137, "message": "OOMKilled"},
                "not an object",
            ],
            running_records=[
                {
                    "start_at": 1_700_000_001,
                    "end_at": 1_700_000_009,
                    "end_reason": "OOM",
                    "end_related_task": "worker-1",
                }
            ],
        ),
        requested_id="job-1",
    )
    assert (job.id, job.name, job.phase, job.reported_phase) == (
        "job-1",
        "train",
        TrainingJobPhase.FAILED,
        "Failed",
    )
    assert job.secondary_phase == "FailedOOM"
    assert job.tasks == ("worker-0", "worker-1") and job.checked_tasks() == ["worker-0", "worker-1"]
    assert len(job.task_statuses) == 2
    assert job.failed_task_statuses == [{"task": "worker-1", "exit_code": 137, "message": "OOMKilled"}]
    assert job.end_reason == ("OOM", "worker-1")
    assert job.create_time_ms == NOW_MS and job.end_time_ms == 1_700_000_009_000


def test_a_view_is_returned_as_it_is_and_still_checked_against_the_id_asked_for():
    job = TrainingJob.from_api(body())
    assert TrainingJob.from_api(job) is job
    with pytest.raises(ModelArtsUnexpectedJobError):
        TrainingJob.from_api(job, requested_id="job-2")


def test_the_job_answered_must_be_the_job_asked_for():
    with pytest.raises(ModelArtsUnexpectedJobError) as ei:
        TrainingJob.from_api(body(), requested_id="job-2")
    assert (ei.value.requested, ei.value.received) == ("job-2", "job-1")


@pytest.mark.parametrize("bad", ["../x", "a/b", "x y", 7, "." * 3])
def test_an_id_that_cannot_be_a_path_segment_is_refused(bad):
    job = body()
    job["metadata"]["id"] = bad
    with pytest.raises(ModelArtsValidationError, match=r"metadata\.id"):
        TrainingJob.from_api(job)


@pytest.mark.parametrize(
    ("tasks", "valid", "problem"),
    [
        (["w", None, "w", "../x", 3], ("w",), r"status.tasks\[1\]"),
        ("worker-0", (), "not a list"),
        (["a", "a"], ("a",), "twice"),
    ],
)
def test_bad_task_lists_keep_the_valid_ids_and_name_the_first_problem(tasks, valid, problem):
    job = TrainingJob.from_api(body(tasks=tasks))
    assert job.tasks == valid
    with pytest.raises(ModelArtsValidationError, match=problem):
        job.checked_tasks()


@pytest.mark.parametrize("raw", [None, "Exploded", 5, {"x": 1}])
def test_unknown_or_missing_phases_are_kept_as_reported_and_refused_by_evaluation(raw):
    job = TrainingJob.from_api(body(phase=raw))
    assert job.phase is None and job.reported_phase == raw
    with pytest.raises(ModelArtsResponseError):
        job.outcome(training_job_id="job-1", success_phases=["Completed"], failure_phases=["Failed"])


@pytest.mark.parametrize("created", [-5, 10**16, "1700000000000", True, None])
def test_implausible_times_are_dropped(created):
    job = body()
    job["metadata"]["create_time"] = created
    assert TrainingJob.from_api(job).create_time_ms is None


def test_a_body_without_metadata_or_status_is_an_empty_view():
    for raw in (None, [], {}, {"metadata": "x", "status": 3}):
        job = TrainingJob.from_api(raw)
        assert (job.id, job.phase, job.tasks, job.task_statuses) == (None, None, (), ())
        assert not job.has_metadata


def test_phase_evaluation_lives_with_the_phases():
    kwargs = {
        "training_job_id": "j",
        "success_phases": DEFAULT_SUCCESS_PHASES,
        "failure_phases": DEFAULT_FAILURE_PHASES,
    }
    assert evaluate_phase("Running", **kwargs).state == "running"
    assert evaluate_phase("Completed", **kwargs).state == "success"
    assert evaluate_phase("Terminated", **kwargs).state == "failed"
    with pytest.raises(ModelArtsResponseError, match="neither"):
        evaluate_phase("Abnormal", training_job_id="j", success_phases=["Completed"], failure_phases=[])
