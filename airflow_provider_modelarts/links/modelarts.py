"""Operator extra links: the training job in the ModelArts console, and an opt-in fresh log preview.

How Airflow 3 resolves links: the worker calls ``get_link()`` of every link on the operator when the
task finishes and stores the result in XCom under ``xcom_key``; the UI reads that XCom value. Links
registered as ``global_operator_extra_links`` of a plugin are instead resolved by the API server each
time a task's links are shown. :class:`ModelArtsTaskLogPreviewLink` works both ways: on an operator
(``enable_log_preview_link=True``) it holds a link minted at the end of the task; registered in a
plugin it mints a fresh link each time the links are shown, which is what makes a 5-minute OBS link
usable from the UI.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

from airflow.providers.common.compat.sdk import BaseOperatorLink, XCom

if TYPE_CHECKING:
    from airflow.providers.common.compat.sdk import Context
    from airflow.sdk.types import TaskInstanceKey

log = logging.getLogger(__name__)

TRAINING_JOB_XCOM_KEY = "modelarts_training_job"
"""XCom key holding ``{"training_job_id", "console_url", "modelarts_conn_id", "task_ids"}``."""

LINK_DATA_ATTRIBUTE = "modelarts_link_data"
"""Operator attribute: what :func:`persist_training_job_links` stored during this run, or ``None``.

Operators carrying these links declare it as a class attribute (``None``). When the worker evaluates the
links at the end of the task it reads this attribute instead of XCom, so a task that failed before it
stored anything (wrong job id, bad destination, incomplete connection) gets no link and no second,
misleading ``XCom not found`` error in its log. Operators without the attribute (a plugin's global link
resolved by the API server) read XCom.
"""

LOG_PREVIEW_LINK_TIMEOUT = 3.0
"""Seconds the preview link may spend asking ModelArts; the UI must never hang on it."""


def persist_training_job_links(
    context: Context,
    *,
    training_job_id: str,
    console_url: str,
    modelarts_conn_id: str | None = None,
    task_ids: list[str] | None = None,
) -> None:
    """Store what the ModelArts extra links need in XCom, for the running task instance.

    :param context: the task's execution context.
    :param training_job_id: the training job the task works on.
    :param console_url: the job's ModelArts console URL (``ModelArtsHook.console_url``).
    :param modelarts_conn_id: the connection the preview link uses; defaults to the operator's
        ``modelarts_conn_id``.
    :param task_ids: the job's worker task ids, if known (the preview link shows the first one).
    """
    task = context.get("task")
    conn_id = modelarts_conn_id or getattr(task, "modelarts_conn_id", None) or "modelarts_default"
    value = {
        "training_job_id": training_job_id,
        "console_url": console_url,
        "modelarts_conn_id": conn_id,
        "task_ids": list(task_ids or []),
    }
    context["ti"].xcom_push(key=TRAINING_JOB_XCOM_KEY, value=value)
    if task is not None and hasattr(task, LINK_DATA_ATTRIBUTE):
        setattr(task, LINK_DATA_ATTRIBUTE, value)


def _read_xcom_from_db(ti_key: TaskInstanceKey) -> Any:
    """Read the stored job outside a task (API server resolving a plugin's global link)."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        row = session.execute(
            XComModel.get_many(
                key=TRAINING_JOB_XCOM_KEY,
                run_id=ti_key.run_id,
                dag_ids=ti_key.dag_id,
                task_ids=ti_key.task_id,
                map_indexes=ti_key.map_index,
            ).with_only_columns(XComModel.value)
        ).first()
    if not row:
        return None
    value = row[0]
    return json.loads(value) if isinstance(value, (str, bytes)) else value


def _stored_job(ti_key: TaskInstanceKey) -> dict[str, Any] | None:
    try:
        value = XCom.get_value(key=TRAINING_JOB_XCOM_KEY, ti_key=ti_key)
    except Exception:
        # No task supervisor to ask: this is the API server, which reads the metadata DB directly.
        value = _read_xcom_from_db(ti_key)
    return value if isinstance(value, dict) and value.get("training_job_id") else None


def _job_for(operator: Any, ti_key: TaskInstanceKey) -> dict[str, Any] | None:
    if not hasattr(operator, LINK_DATA_ATTRIBUTE):
        return _stored_job(ti_key)
    # The worker, at the end of the task: what this run stored, or nothing to link to.
    value = getattr(operator, LINK_DATA_ATTRIBUTE)
    return value if isinstance(value, dict) and value.get("training_job_id") else None


class ModelArtsTrainingJobConsoleLink(BaseOperatorLink):
    """Link to the training job's page in the ModelArts console of the connection's region."""

    name = "ModelArts Training Job"

    def get_link(self, operator: Any, *, ti_key: TaskInstanceKey) -> str:
        try:
            stored = _job_for(operator, ti_key)
        except Exception:
            log.warning("Could not read the ModelArts console link from XCom", exc_info=True)
            return ""
        return str(stored.get("console_url") or "") if stored else ""


class ModelArtsTaskLogPreviewLink(BaseOperatorLink):
    """Opt-in link that asks ModelArts for a fresh preview link of the first worker's log.

    The OBS link works without authentication for about five minutes, so anyone who can see the DAG
    could open the log: operators add this link only with ``enable_log_preview_link=True``. One
    attempt with a short timeout; on any failure the console link (or "") is returned instead.
    """

    name = "ModelArts Task Log (preview)"

    def get_link(self, operator: Any, *, ti_key: TaskInstanceKey) -> str:
        try:
            stored = _job_for(operator, ti_key)
        except Exception:
            log.warning("Could not read the ModelArts job from XCom", exc_info=True)
            return ""
        if not stored:
            return ""
        fallback = str(stored.get("console_url") or "")
        try:
            return self._fresh_preview_url(stored)
        except Exception as e:
            log.warning(
                "No fresh log preview link for training job %s (%s); showing the console link",
                stored["training_job_id"],
                type(e).__name__,
            )
            return fallback

    @staticmethod
    def _fresh_preview_url(stored: dict[str, Any]) -> str:
        from airflow_provider_modelarts.hooks.modelarts import ModelArtsHook

        hook = ModelArtsHook(
            stored.get("modelarts_conn_id") or "modelarts_default",
            max_retries=0,
            request_timeout=LOG_PREVIEW_LINK_TIMEOUT,
        )
        job_id = stored["training_job_id"]
        task_ids = stored.get("task_ids") or []
        if not task_ids:
            job = hook.get_training_job(job_id)
            task_ids = (job.get("status") or {}).get("tasks") or []
        if not task_ids:
            raise LookupError(f"training job {job_id} has no tasks yet")
        return hook.get_task_log_url(job_id, task_ids[0], download=False)
