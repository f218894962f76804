"""The emulator's table of jobs and the training-job body the ModelArts API returns for each."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from airflow_provider_modelarts.emulator.live import end_reason
from airflow_provider_modelarts.emulator.scenario import (
    SECONDARY_PHASE,
    TERMINAL,
    EmulatedJob,
    ScenarioError,
    build_job,
)

__all__ = ["JobTable", "job_body"]


class JobTable:
    """The jobs an emulator serves, by id (safe to use from several threads).

    :param raw_jobs: the scenario's job mappings.
    :param base_dir: folder that relative log file paths are resolved against.
    """

    def __init__(self, raw_jobs: list[dict[str, Any]], *, base_dir: Path | None) -> None:
        self._raw = raw_jobs
        self._base_dir = base_dir
        self._lock = threading.Lock()
        self._jobs: dict[str, EmulatedJob] = {}

    def load(self, base_time: float) -> None:
        """(Re)build every scenario job with timelines counting from ``base_time``."""
        jobs: dict[str, EmulatedJob] = {}
        for index, raw in enumerate(self._raw):
            job = build_job(raw, base_time=base_time, index=index, base_dir=self._base_dir)
            if job.id in jobs:
                raise ScenarioError(f"duplicate job id {job.id!r}")
            jobs[job.id] = job
        with self._lock:
            self._jobs = jobs

    def add(self, raw: dict[str, Any], *, base_time: float) -> None:
        """Add one job whose timeline counts from ``base_time``."""
        with self._lock:
            built = build_job(raw, base_time=base_time, index=len(self._jobs), base_dir=self._base_dir)
            if built.id in self._jobs:
                raise ScenarioError(f"duplicate job id {built.id!r}")
            self._jobs[built.id] = built

    def get(self, job_id: str) -> EmulatedJob | None:
        """The job with that id, or None."""
        return self._jobs.get(job_id)

    def __getitem__(self, job_id: str) -> EmulatedJob:
        return self._jobs[job_id]

    def remove(self, job_id: str) -> None:
        """Forget a job (a no-op for an unknown id)."""
        with self._lock:
            self._jobs.pop(job_id, None)

    def ids(self) -> list[str]:
        """Ids of the jobs, in the order they were added."""
        return list(self._jobs)

    def all(self) -> list[EmulatedJob]:
        """The jobs, in the order they were added."""
        return list(self._jobs.values())


def _task_statuses(job: EmulatedJob, *, started: bool, terminal: bool) -> list[dict[str, Any]]:
    if terminal:
        return [
            {"task": t.id, "exit_code": t.exit_code if t.exit_code is not None else 0, "message": t.message}
            for t in job.tasks
        ]
    if started:
        return [{"task": t.id, "message": ""} for t in job.tasks]
    return []


def _status(job: EmulatedJob, now: float) -> dict[str, Any]:
    entry = job.entry_at(now)
    phase = entry.phase
    start = job.running_start()
    started_at = start if start is not None and now >= start else None
    terminal = phase in TERMINAL
    end = job.terminal_time() if terminal else None
    metrics = [[job.create_time_ms, 0]]
    duration_ms = 0
    if started_at is not None:
        duration_ms = max(int(((end if end is not None else now) - started_at) * 1000), 0)
        metrics.append([int(started_at * 1000), job.node_count])
    status: dict[str, Any] = {
        "phase": phase,
        "secondary_phase": entry.secondary_phase or SECONDARY_PHASE[phase],
        "duration": duration_ms,
        "start_time": int(started_at * 1000) if started_at is not None else 0,
        "node_count_metrics": metrics,
        "tasks": [t.id for t in job.tasks],
        "task_statuses": _task_statuses(job, started=started_at is not None, terminal=terminal),
    }
    if started_at is not None:
        record: dict[str, Any] = {"start_at": int(started_at), "start_type": "init_or_rescheduled"}
        if end is not None:
            record.update({"end_at": int(end), "end_reason": end_reason(job, phase)})
        status["running_records"] = [record]
    return status


def _algorithm(job: EmulatedJob) -> dict[str, Any]:
    engine = "pytorch_1.8.0-cuda_10.2-py_3.7-ubuntu_18.04-x86_64"
    algorithm: dict[str, Any] = {
        "id": f"algo-{job.id}",
        "name": f"{job.name}-algorithm",
        "code_dir": "obs://modelarts-emulator/code/",
        "boot_file": "obs://modelarts-emulator/code/train.py",
        "engine": {"engine_id": engine, "engine_name": "PyTorch", "engine_version": engine},
    }
    algorithm.update(job.algorithm)
    return algorithm


def _spec(job: EmulatedJob) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "resource": {
            "flavor_id": "modelarts.vm.cpu.8u",
            "flavor_name": "CPU: 8vCPUs 32GB",
            "node_count": job.node_count,
        },
        "log_export_path": {},
        "is_hosted_log": True,
    }
    for key, value in job.spec.items():
        if key == "resource" and isinstance(value, dict):
            spec["resource"].update(value)
        else:
            spec[key] = value
    return spec


def job_body(job: EmulatedJob, now: float) -> dict[str, Any]:
    """The training job as ``GET /v2/{project_id}/training-jobs/{id}`` returns it at time ``now``.

    :param job: the emulated job.
    :param now: the emulator's clock (unix seconds).
    """
    return {
        "kind": job.kind,
        "metadata": {
            "id": job.id,
            "name": job.name,
            "workspace_id": "0",
            "description": job.description,
            "create_time": job.create_time_ms,
            "user_name": job.user_name,
            "annotations": {"job_template": "Template DL"},
        },
        "status": _status(job, now),
        "algorithm": _algorithm(job),
        "spec": _spec(job),
    }
