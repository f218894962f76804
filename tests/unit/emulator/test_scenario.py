"""Scenario parsing and job timelines."""

from __future__ import annotations

import json

import pytest

from airflow_provider_modelarts.emulator import ModelArtsEmulator, ScenarioError
from airflow_provider_modelarts.emulator.scenario import build_job, default_scenario, load_scenario

BASE = 1_700_000_000.0


def _job(**overrides):
    raw = {
        "id": "j1",
        "timeline": [
            {"phase": "Pending", "at": 0},
            {"phase": "Running", "at": 10},
            {"phase": "Completed", "at": 20},
        ],
        "tasks": [{"id": "worker-0", "log": {"generate": {"size": 1000, "seed": 1}}}],
    }
    raw.update(overrides)
    return build_job(raw, base_time=BASE)


def test_timeline_phases():
    job = _job()
    assert job.phase_at(BASE - 5) == "Pending"
    assert job.phase_at(BASE + 9.9) == "Pending"
    assert job.phase_at(BASE + 10) == "Running"
    assert job.phase_at(BASE + 25) == "Completed"


def test_log_grows_while_running():
    job = _job()
    task = job.tasks[0]
    assert job.log_size_at(task, BASE + 5) == 0
    assert job.log_size_at(task, BASE + 15) == 500
    assert job.log_size_at(task, BASE + 20) == 1000
    assert job.log_size_at(task, BASE + 100) == 1000


def test_default_exit_codes():
    assert _job().tasks[0].exit_code == 0
    assert _job(timeline=[{"phase": "Failed", "at": 0}]).tasks[0].exit_code == 1
    assert _job(timeline=["Running"]).tasks[0].exit_code is None


def test_terminate_freezes_log():
    job = _job()
    job.terminate(BASE + 15)
    assert job.phase_at(BASE + 16) == "Terminated"
    assert job.phase_at(BASE + 100) == "Terminated"
    assert job.tasks[0].log.size == 500
    assert job.log_size_at(job.tasks[0], BASE + 100) == 500


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"id": ""}, "job id"),
        ({"timeline": [{"phase": "Sleeping"}]}, "unknown phase"),
        ({"timeline": [{"phase": "Running", "at": 5}, {"phase": "Completed", "at": 1}]}, "non-decreasing"),
        ({"timeline": []}, "non-empty"),
        ({"tasks": [{"id": "a"}, {"id": "a"}]}, "duplicate task"),
        ({"tasks": [{"id": "w", "log": {"generate": {}}}]}, "size"),
    ],
)
def test_invalid_scenarios(overrides, message):
    with pytest.raises(ScenarioError, match=message):
        _job(**overrides)


def test_load_json_and_yaml(tmp_path):
    doc = {"jobs": [{"id": "x", "tasks": [{"id": "worker-0", "log": {"file": "x.log"}}]}]}
    (tmp_path / "x.log").write_text("from file\n")
    (tmp_path / "s.json").write_text(json.dumps(doc))
    (tmp_path / "s.yaml").write_text(
        "jobs:\n  - id: x\n    tasks:\n      - id: worker-0\n        log:\n          file: x.log\n"
    )
    for name in ("s.json", "s.yaml"):
        emu = ModelArtsEmulator(tmp_path / name)
        assert emu.job_ids() == ["x"]
        assert emu.log_bytes("x", "worker-0") == b"from file\n"
    (tmp_path / "bad.yaml").write_text("- just a list\n")
    with pytest.raises(ScenarioError):
        load_scenario(tmp_path / "bad.yaml")


def test_default_scenario_jobs():
    emu = ModelArtsEmulator()
    assert emu.job_ids() == [job["id"] for job in default_scenario()["jobs"]]
    assert emu.log_size("job-multi", "worker-0") == 1048576
    assert len(emu.log_sha256("job-multi", "worker-1")) == 64


def test_duplicate_job_ids_rejected():
    with pytest.raises(ScenarioError, match="duplicate"):
        ModelArtsEmulator({"jobs": [{"id": "a"}, {"id": "a"}]})
