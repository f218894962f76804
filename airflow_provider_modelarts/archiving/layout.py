"""Where archived objects go, and the checks that keep values from the API inside the destination.

Job ids, job names and task names come from ModelArts and are treated like user input: each one that
can reach a path is one safe path segment, the job answered must be the job asked for, task names are
unique, and every final and staging name fits the file-name limit. All of it is checked before a byte is
written.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from string import Formatter
from typing import TYPE_CHECKING, Any

from airflow_provider_modelarts.archiving.staging import NAME_MAX, STAGING_NAME_OVERHEAD
from airflow_provider_modelarts.connection import validate_resource_id
from airflow_provider_modelarts.exceptions import ModelArtsValidationError
from airflow_provider_modelarts.training_job import TrainingJob

if TYPE_CHECKING:
    from airflow.providers.common.compat.sdk import ObjectStoragePath

__all__ = [
    "RECORD_SUFFIX",
    "ArchiveLayout",
    "JobIdentity",
    "job_identity",
    "plan_paths",
]

_TEMPLATE_KEYS = frozenset({"training_job_id", "task_id", "job_name"})
# Each log gets a small record next to it: "{log name}.record.json".
RECORD_SUFFIX = ".record.json"


@dataclass(frozen=True)
class ArchiveLayout:
    """Where archived objects go, relative to the destination.

    :param path_template: object path of one task's log; ``.gz`` is appended when gzip is used.
    :param manifest_template: object path of the job's manifest.
    """

    path_template: str = "{training_job_id}/{task_id}.log"
    manifest_template: str = "{training_job_id}/manifest.json"

    def __post_init__(self) -> None:
        for name, template, needed in (
            ("path_template", self.path_template, {"task_id"}),
            ("manifest_template", self.manifest_template, set()),
        ):
            keys = {f for _, f, _, _ in Formatter().parse(template) if f is not None}
            unknown = keys - _TEMPLATE_KEYS
            if unknown:
                raise ModelArtsValidationError(
                    f"{name} {template!r} uses unknown fields {sorted(unknown)}; "
                    f"allowed: {sorted(_TEMPLATE_KEYS)}"
                )
            if not needed <= keys:
                raise ModelArtsValidationError(f"{name} {template!r} must contain {sorted(needed)}")
            if template.startswith("/") or ".." in template.split("/"):
                raise ModelArtsValidationError(f"{name} {template!r} must be a relative path without '..'")

    @property
    def uses_job_name(self) -> bool:
        return "{job_name}" in self.path_template or "{job_name}" in self.manifest_template

    def task_relpath(
        self, *, training_job_id: str, task_id: str, job_name: str, compression: str | None
    ) -> str:
        rel = self.path_template.format(training_job_id=training_job_id, task_id=task_id, job_name=job_name)
        return rel + ".gz" if compression == "gzip" else rel

    def manifest_relpath(self, *, training_job_id: str, job_name: str) -> str:
        return self.manifest_template.format(training_job_id=training_job_id, task_id="", job_name=job_name)

    def task_path(
        self,
        root: ObjectStoragePath,
        *,
        training_job_id: str,
        task_id: str,
        job_name: str,
        compression: str | None,
    ) -> ObjectStoragePath:
        return root / self.task_relpath(
            training_job_id=training_job_id, task_id=task_id, job_name=job_name, compression=compression
        )

    def manifest_path(
        self, root: ObjectStoragePath, *, training_job_id: str, job_name: str
    ) -> ObjectStoragePath:
        return root / self.manifest_relpath(training_job_id=training_job_id, job_name=job_name)


@dataclass(frozen=True)
class JobIdentity:
    """The checked id and name of the job being archived."""

    training_job_id: str
    job_name: str


def job_identity(
    job: TrainingJob | dict[str, Any], *, requested: str | None, layout: ArchiveLayout
) -> JobIdentity:
    """The checked id and name of a job (a body or a :class:`TrainingJob`).

    :param job: the body from ``get_training_job``, or its view.
    :param requested: the id that was asked for (``None``: not checked against it).
    :param layout: the layout (the name is only checked when a template uses it).
    :raises ModelArtsUnexpectedJobError: the body describes another job.
    :raises ModelArtsValidationError: an id or a name that cannot be a path segment.
    """
    view = TrainingJob.from_api(job, requested_id=requested)
    if not view.has_metadata:
        raise ModelArtsValidationError("The training job body has no metadata")
    if view.id is None:
        raise ModelArtsValidationError("The training job body has no metadata.id")
    if view.name is None:
        job_name = view.id
    elif layout.uses_job_name:
        job_name = validate_resource_id(view.name, "metadata.name of the training job")
    else:
        job_name = view.name
    return JobIdentity(training_job_id=view.id, job_name=job_name)


def _check_relpath(rel: str, what: str) -> str:
    norm = posixpath.normpath(rel)
    if rel.startswith("/") or norm == "." or norm.startswith("../") or norm == "..":
        raise ModelArtsValidationError(f"{what} {rel!r:.300} is not a path inside the destination")
    for segment in norm.split("/"):
        if len(segment.encode("utf-8")) > NAME_MAX:
            raise ModelArtsValidationError(
                f"{what} {rel!r:.300} has a path segment longer than {NAME_MAX} bytes"
            )
    name = posixpath.basename(norm)
    longest = len(name.encode("utf-8")) + len(RECORD_SUFFIX) + STAGING_NAME_OVERHEAD
    if longest > NAME_MAX:
        raise ModelArtsValidationError(
            f"{what} {rel!r:.300}: the file name {name!r:.300} is {len(name.encode('utf-8'))} bytes; with "
            f"its record and staging names it must fit {NAME_MAX} bytes, so at most "
            f"{NAME_MAX - len(RECORD_SUFFIX) - STAGING_NAME_OVERHEAD} bytes"
        )
    return norm


def plan_paths(
    layout: ArchiveLayout,
    identity: JobIdentity,
    task_ids: list[str],
    *,
    compression: str | None,
) -> tuple[dict[str, str], str]:
    """Relative paths of each task's log and of the manifest, checked to be inside and distinct.

    :returns: ``({task_id: relative log path}, relative manifest path)``.
    :raises ModelArtsValidationError: a path leaves the destination, a name is too long, or two objects
        (logs, their records, the manifest) would share a path.
    """
    ids = {"training_job_id": identity.training_job_id, "job_name": identity.job_name}
    manifest = _check_relpath(layout.manifest_relpath(**ids), "manifest path")
    owners: dict[str, str] = {manifest: "the manifest"}
    paths: dict[str, str] = {}
    for task_id in task_ids:
        rel = layout.task_relpath(**ids, task_id=task_id, compression=compression)
        rel = _check_relpath(rel, f"log path of task {task_id!r}")
        for path, what in ((rel, f"the log of task {task_id!r}"), (rel + RECORD_SUFFIX, "a record")):
            if path in owners:
                raise ModelArtsValidationError(
                    f"{what} and {owners[path]} would both be written to {path!r}; "
                    "check status.tasks and path_template"
                )
            owners[path] = what
        paths[task_id] = rel
    return paths, manifest
