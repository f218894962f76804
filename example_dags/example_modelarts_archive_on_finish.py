"""Archive each ModelArts training job's logs as soon as it finishes, exactly once (event-driven).

``ModelArtsTrainingJobEventTrigger`` runs in the triggerer as the ``AssetWatcher`` of the
``modelarts://training-jobs`` asset: every job that reaches Completed, Failed, Terminated or Abnormal
becomes one asset event whose payload is ``{training_job_id, name, phase, create_time, end_time,
tasks}``, and the DAG is scheduled on that asset. Airflow may fold events that arrive close together
into one DAG run, so ``finished_training_jobs`` reads every event of the run and ``archive_task_logs``
is mapped over their job ids: each job is archived once, whether its event had a run to itself or not.

Configuration (environment): ``MODELARTS_ARCHIVE_DESTINATION`` (default a local ``file://`` folder),
``MODELARTS_ARCHIVE_CONN_ID``, ``MODELARTS_ARCHIVE_COMPRESSION``, ``MODELARTS_EVENT_POLL_INTERVAL``
(seconds between job searches, default 60) and ``MODELARTS_EVENT_NAME_FILTER`` (only jobs whose name
contains it).
"""

from __future__ import annotations

# [START howto_trigger_modelarts_training_job_event]
import os
import tempfile
from datetime import datetime
from typing import Any

from airflow.sdk import DAG, Asset, AssetWatcher, task

from airflow_provider_modelarts.connection import DEFAULT_CONN_ID
from airflow_provider_modelarts.operators.modelarts import ModelArtsArchiveTaskLogsOperator
from airflow_provider_modelarts.triggers.modelarts import ModelArtsTrainingJobEventTrigger

DESTINATION = os.environ.get(
    "MODELARTS_ARCHIVE_DESTINATION", f"file://{tempfile.gettempdir()}/modelarts-archive"
)
DESTINATION_CONN_ID = os.environ.get("MODELARTS_ARCHIVE_CONN_ID") or None
COMPRESSION = os.environ.get("MODELARTS_ARCHIVE_COMPRESSION") or None
POLL_INTERVAL = float(os.environ.get("MODELARTS_EVENT_POLL_INTERVAL", "60"))
NAME_FILTER = os.environ.get("MODELARTS_EVENT_NAME_FILTER") or None

training_jobs = Asset(
    "modelarts://training-jobs",
    watchers=[
        AssetWatcher(
            name="modelarts_training_job_finished",
            trigger=ModelArtsTrainingJobEventTrigger(
                modelarts_conn_id=DEFAULT_CONN_ID,
                poll_interval=POLL_INTERVAL,
                name_filter=NAME_FILTER,
            ),
        )
    ],
)

with DAG(
    dag_id="example_modelarts_archive_on_finish",
    schedule=[training_jobs],
    start_date=datetime(2024, 1, 1),
    catchup=False,
    tags=["example", "modelarts"],
) as dag:

    @task
    def finished_training_jobs(triggering_asset_events: Any = None) -> list[str]:
        """The job id of every event behind this run, once each."""
        ids = [
            event.extra["payload"]["training_job_id"]
            for events in (triggering_asset_events or {}).values()
            for event in events
            if "payload" in (event.extra or {})
        ]
        return list(dict.fromkeys(ids))

    ModelArtsArchiveTaskLogsOperator.partial(
        task_id="archive_task_logs",
        destination=DESTINATION,
        destination_conn_id=DESTINATION_CONN_ID,
        compression=COMPRESSION,
        wait_for_completion=False,
    ).expand(training_job_id=finished_training_jobs())
# [END howto_trigger_modelarts_training_job_event]
