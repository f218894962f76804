"""ModelArtsArchiveTaskLogsOperator: waiting, deferral, destinations, results; HTTP faked with requests-mock."""

from __future__ import annotations

import hashlib
import json
import time
from unittest import mock

import pytest
from airflow.providers.common.compat.sdk import Asset, ObjectStoragePath, TaskDeferred

from airflow_provider_modelarts.exceptions import ModelArtsError, ModelArtsValidationError
from airflow_provider_modelarts.operators import modelarts as op_module
from airflow_provider_modelarts.operators.modelarts import ModelArtsArchiveTaskLogsOperator
from tests.fixtures.fake_hooks import fake_hook
from tests.fixtures.fake_obs import FakeObs, FakeSource, make_log

LOGS = {"worker-0": make_log(300_000, seed=0), "worker-1": make_log(200_000, seed=1)}


class JobScript(FakeSource):
    """What the (autospecced) hook answers: job status from a scripted phase sequence, logs from FakeObs."""

    def __init__(self, obs, phases, tasks=tuple(LOGS)):
        super().__init__(obs)
        self.phases = list(phases)
        self.tasks = list(tasks)
        self.status_calls = 0

    def get_training_job(self, training_job_id):
        self.status_calls += 1
        phase = self.phases.pop(0) if len(self.phases) > 1 else self.phases[0]
        return {
            "metadata": {"id": training_job_id, "name": "n"},
            "status": {"phase": phase, "tasks": self.tasks},
        }

    def console_url(self, training_job_id):
        return f"https://console.example/modelarts/#/trainingJobs/{training_job_id}"


@pytest.fixture
def obs():
    with FakeObs(dict(LOGS)) as fake:
        yield fake


def make_op(obs, phases, tmp_path, **kw):
    kw.setdefault("destination", f"file://{tmp_path}/archive")
    kw.setdefault("poll_interval", 0)
    op = ModelArtsArchiveTaskLogsOperator(task_id="archive", training_job_id="job-1", **kw)
    script = JobScript(obs, phases)
    op.__dict__["hook"] = fake_hook(script)
    op.new_hook = obs.source  # type: ignore[method-assign]
    return op, script


def context():
    return {"ti": mock.MagicMock(), "task": None}


def test_init_does_no_work_and_template_fields_exist():
    with mock.patch.object(op_module, "ModelArtsHook") as hook_cls:
        op = ModelArtsArchiveTaskLogsOperator(
            task_id="t",
            training_job_id="{{ params.job }}",
            destination="{{ var.value.dest }}",
            task_ids="{{ params.tasks }}",
        )
        hook_cls.assert_not_called()
    for field in op.template_fields:
        assert hasattr(op, field)
    assert {"training_job_id", "destination", "task_ids", "modelarts_conn_id", "destination_conn_id"} <= set(
        op.template_fields
    )
    assert op.deferrable is False and op.wait_for_completion is True and op.compression is None


def test_waits_until_terminal_then_archives_everything(obs, tmp_path):
    op, hook = make_op(obs, ["Pending", "Running", "Running", "Completed"], tmp_path)
    with mock.patch.object(op_module.time, "sleep") as sleep:
        result = op.execute(context())
    assert hook.status_calls == 4 and sleep.call_count == 3
    assert result["training_job_id"] == "job-1" and result["phase"] == "Completed"
    assert result["manifest"] == f"file://{tmp_path}/archive/job-1/manifest.json"
    assert [t["task_id"] for t in result["tasks"]] == ["worker-0", "worker-1"]
    for t in result["tasks"]:
        data = LOGS[t["task_id"]]
        assert t == {
            "task_id": t["task_id"],
            "uri": f"file://{tmp_path}/archive/job-1/{t['task_id']}.log",
            "size": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
        }
        assert (tmp_path / "archive/job-1" / f"{t['task_id']}.log").read_bytes() == data
    json.dumps(result)  # XCom-serialisable


def test_failed_job_logs_are_archived(obs, tmp_path):
    op, _ = make_op(obs, ["Failed"], tmp_path)
    result = op.execute(context())
    assert result["phase"] == "Failed" and len(result["tasks"]) == 2
    manifest = json.loads((tmp_path / "archive/job-1/manifest.json").read_text())
    assert {e["phase"] for e in manifest["tasks"]} == {"Failed"}


def test_timeout_is_a_clear_error_and_writes_nothing(obs, tmp_path):
    op, _ = make_op(obs, ["Running"], tmp_path, timeout=0.05, poll_interval=0.01)
    with pytest.raises(ModelArtsError, match=r"Timed out after 0.05s .* still Running"):
        op.execute(context())
    assert not (tmp_path / "archive").exists()
    assert obs.links == 0


def test_no_wait_archives_what_exists_and_marks_incomplete(obs, tmp_path):
    op, hook = make_op(obs, ["Running"], tmp_path, wait_for_completion=False, task_ids=["worker-1"])
    result = op.execute(context())
    assert hook.status_calls == 1 and result["phase"] == "Running"
    manifest = json.loads((tmp_path / "archive/job-1/manifest.json").read_text())
    assert manifest["complete"] is False
    assert [(e["task_id"], e["complete"]) for e in manifest["tasks"]] == [("worker-1", False)]


def test_deferrable_defers_with_all_terminal_phases_as_success(obs, tmp_path):
    op, hook = make_op(obs, ["Running"], tmp_path, deferrable=True, timeout=600, poll_interval=7)
    with pytest.raises(TaskDeferred) as exc:
        op.execute(context())
    trigger = exc.value.trigger
    assert exc.value.method_name == "execute_complete"
    classpath, kwargs = trigger.serialize()
    assert classpath == "airflow_provider_modelarts.triggers.modelarts.ModelArtsTrainingJobTrigger"
    assert kwargs["training_job_id"] == "job-1" and kwargs["poll_interval"] == 7
    assert sorted(kwargs["success_phases"]) == ["Abnormal", "Completed", "Failed", "Terminated"]
    assert kwargs["failure_phases"] == []
    assert kwargs["end_time"] is not None
    assert hook.status_calls == 1 and obs.links == 0


def test_deferrable_finishes_inline_when_already_terminal(obs, tmp_path):
    op, _ = make_op(obs, ["Terminated"], tmp_path, deferrable=True)
    result = op.execute(context())
    assert result["phase"] == "Terminated" and len(result["tasks"]) == 2


def test_execute_complete_archives_on_success(obs, tmp_path):
    op, _ = make_op(obs, ["Abnormal"], tmp_path, deferrable=True)
    result = op.execute_complete(
        context(), {"status": "success", "training_job_id": "job-1", "phase": "Abnormal", "message": "done"}
    )
    assert result["phase"] == "Abnormal" and len(result["tasks"]) == 2


@pytest.mark.parametrize(
    ("event", "match"),
    [
        (None, "no event"),
        ({"status": "timeout", "message": "still Running after 600s"}, "still Running after 600s"),
        ({"status": "error", "message": "401 APIG.0301"}, "APIG.0301"),
    ],
)
def test_execute_complete_rejects_bad_events(obs, tmp_path, event, match):
    op, _ = make_op(obs, ["Completed"], tmp_path, deferrable=True)
    with pytest.raises(ModelArtsError, match=match):
        op.execute_complete(context(), event)
    assert obs.links == 0


def test_unknown_task_id_lists_available_tasks(obs, tmp_path):
    op, _ = make_op(obs, ["Completed"], tmp_path, task_ids=["worker-7"])
    with pytest.raises(ModelArtsValidationError, match=r"worker-7.*\['worker-0', 'worker-1'\]"):
        op.execute(context())


@pytest.mark.parametrize(
    ("destination", "match"),
    [
        ("ftp2://host/x", "scheme 'ftp2' is not supported"),
        ("relative/dir", "relative path"),
        ("./dir", "relative path"),
        ("", "destination must be"),
        (42, "destination must be"),
        # two slashes: "tmp" is the URI's host, and ObjectStoragePath would write to ./archive/x
        ("file://tmp/archive", r"names 'tmp' as the host.*file:///tmp/archive"),
        ("file://archive-host/x", r"names 'archive-host' as the host.*three slashes"),
        ("~/archive", r"uses '~', which is not expanded.*absolute path"),
        ("file://~/archive", "uses '~'"),
        ("file:///~/archive", "uses '~'"),
        ("file:archive", "not an absolute file URI"),
        ("s3:///prefix", r"no bucket.*s3://bucket/prefix"),
        ("obs://bucket/prefix?versionId=1", "query or fragment"),
        ("/data/archive#x", "query or fragment"),
        ("file:///data/../archive", r"'\.\.' segments"),
    ],
)
def test_bad_destination_is_rejected_before_any_call(obs, tmp_path, monkeypatch, destination, match):
    monkeypatch.chdir(tmp_path)
    op, hook = make_op(obs, ["Completed"], tmp_path, destination=destination)
    with pytest.raises(ModelArtsValidationError, match=match):
        op.execute(context())
    assert hook.status_calls == 0
    assert obs.links == 0
    assert list(tmp_path.iterdir()) == [], "nothing may be written anywhere, the cwd included"


@pytest.mark.parametrize(
    ("destination", "expected"),
    [
        ("file://localhost{root}", "file://{root}"),
        ("file:{root}", "file://{root}"),
        ("{root}", "file://{root}"),
        ("  file://{root}  ", "file://{root}"),
    ],
)
def test_unambiguous_local_destinations_mean_the_absolute_path(obs, tmp_path, destination, expected):
    root = f"{tmp_path}/archive"
    op, _ = make_op(
        obs, ["Completed"], tmp_path, destination=destination.format(root=root), task_ids=["worker-0"]
    )
    result = op.execute(context())
    assert result["tasks"][0]["uri"] == expected.format(root=root) + "/job-1/worker-0.log"
    assert (tmp_path / "archive" / "job-1" / "worker-0.log").stat().st_size == len(LOGS["worker-0"])


@pytest.mark.parametrize(
    "kwargs",
    [
        {"compression": "zip"},
        {"max_workers": 0},
        {"timeout": -1},
        {"task_ids": [1]},
        {"path_template": "x.log"},
        {"retry_wait": -1},
        {"retry_wait": "5"},
        {"max_attempts": -1},
        {"chunk_size": 0},
        {"chunk_size": True},
        {"stall_window": 0},
        {"stall_window": "60"},
        {"stall_min_rate": -1},
        {"stall_min_rate": True},
    ],
)
def test_bad_arguments_are_rejected(obs, tmp_path, kwargs):
    op, hook = make_op(obs, ["Completed"], tmp_path, **kwargs)
    with pytest.raises(ModelArtsValidationError):
        op.execute(context())
    assert hook.status_calls == 0


def test_absolute_path_and_object_storage_path_destinations(obs, tmp_path):
    op, _ = make_op(obs, ["Completed"], tmp_path, destination=str(tmp_path / "plain"), task_ids="worker-0")
    assert op.execute(context())["tasks"][0]["uri"] == f"file://{tmp_path}/plain/job-1/worker-0.log"
    dest = ObjectStoragePath(f"file://{tmp_path}/osp")
    op, _ = make_op(obs, ["Completed"], tmp_path, destination=dest, compression="gzip")
    result = op.execute(context())
    assert result["tasks"][0]["uri"] == f"file://{tmp_path}/osp/job-1/worker-0.log.gz"


def test_rerun_skips_then_overwrite_downloads_again(obs, tmp_path):
    op, _ = make_op(obs, ["Completed"], tmp_path)
    first = op.execute(context())
    assert obs.links == 2
    op, _ = make_op(obs, ["Completed"], tmp_path)
    assert op.execute(context()) == first
    assert obs.links == 2
    op, _ = make_op(obs, ["Completed"], tmp_path, overwrite=True)
    op.execute(context())
    assert obs.links == 4


def test_links_are_persisted_and_asset_event_extra_is_set(obs, tmp_path):
    asset = Asset(name="modelarts-logs", uri=f"file://{tmp_path}/archive")
    op, _ = make_op(obs, ["Completed"], tmp_path, outlets=[asset])
    events = mock.MagicMock()
    ctx = {**context(), "outlet_events": events}
    result = op.execute(ctx)
    events.__getitem__.assert_called_with(asset)
    extra = events.__getitem__.return_value.extra
    assert extra["training_job_id"] == "job-1" and extra["manifest"] == result["manifest"]
    assert [t["task_id"] for t in extra["tasks"]] == ["worker-0", "worker-1"]
    pushed = ctx["ti"].xcom_push.call_args.kwargs
    assert pushed["value"]["training_job_id"] == "job-1"
    assert pushed["value"]["console_url"].endswith("/trainingJobs/job-1")
    assert pushed["value"]["task_ids"] == ["worker-0", "worker-1"]


def test_each_worker_thread_gets_its_own_hook(obs, tmp_path):
    op, _ = make_op(obs, ["Completed"], tmp_path, max_workers=2)
    made = []
    op.new_hook = lambda: made.append(1) or fake_hook(FakeSource(obs))  # type: ignore[method-assign]
    op.execute(context())
    assert 1 <= len(made) <= 2


def test_link_errors_after_the_hooks_retries_fail_the_task_without_a_second_retry_loop(tmp_path, monkeypatch):
    from airflow_provider_modelarts.exceptions import ModelArtsLogTransferError
    from tests.fixtures.fake_obs import FlakyLinkSource, api_503

    sleeps: list[float] = []
    monkeypatch.setattr(time, "sleep", sleeps.append)
    with FakeObs({"worker-0": LOGS["worker-0"]}, script=[("drop", 100_000)]) as fake_obs:
        op, _ = make_op(fake_obs, ["Completed"], tmp_path, task_ids=["worker-0"], retry_wait=2.5)
        source = FlakyLinkSource(fake_obs, [api_503(), api_503()])
        hook = fake_hook(source)
        op.new_hook = lambda: hook  # type: ignore[method-assign]
        with pytest.raises(ModelArtsLogTransferError, match="503"):
            op.execute(context())
    assert source.calls == 2 and sleeps == []
