"""Archive every worker log of a ModelArts training job to object storage, with a verified manifest.

``archive_task_logs`` waits until the job is terminal (Completed, Failed, Terminated or Abnormal; failed
jobs' logs are archived too), then streams each worker's log to
``{destination}/{training_job_id}/{task_id}.log[.gz]`` and writes
``{destination}/{training_job_id}/manifest.json`` (size and sha256 of each log). Expired links and
dropped connections are resumed with a fresh link; re-runs skip logs that are already archived intact.
It emits an event for the ``modelarts_task_logs`` asset, so other DAGs can run when logs are archived.

Configuration (environment, or Airflow Variables of the same name in lower case):
``MODELARTS_TRAINING_JOB_ID`` (default ``demo-train-ok``), ``MODELARTS_ARCHIVE_DESTINATION`` (default a
local ``file://`` folder; ``s3://bucket/prefix`` with ``MODELARTS_ARCHIVE_CONN_ID`` naming an ``aws``
connection, or ``obs://bucket/prefix``), ``MODELARTS_ARCHIVE_COMPRESSION`` (``gzip`` or empty),
``MODELARTS_POLL_INTERVAL`` (seconds, default 30) and ``MODELARTS_DEFERRABLE`` (``true`` to wait in the
triggerer). The defaults match ``example_dags/demo_scenario.json`` for the local emulator.
"""

from __future__ import annotations

# [START howto_quickstart_archive_dag]
# [START howto_archive_logs_setup]
import os
import tempfile
from datetime import datetime

from airflow.sdk import DAG, Asset, task

from airflow_provider_modelarts.operators.modelarts import ModelArtsArchiveTaskLogsOperator

DEFAULT_JOB_ID = os.environ.get("MODELARTS_TRAINING_JOB_ID", "demo-train-ok")
DEFAULT_DESTINATION = os.environ.get(
    "MODELARTS_ARCHIVE_DESTINATION", f"file://{tempfile.gettempdir()}/modelarts-archive"
)
DESTINATION_CONN_ID = os.environ.get("MODELARTS_ARCHIVE_CONN_ID") or None
COMPRESSION = os.environ.get("MODELARTS_ARCHIVE_COMPRESSION") or None
POLL_INTERVAL = float(os.environ.get("MODELARTS_POLL_INTERVAL", "30"))
DEFERRABLE = os.environ.get("MODELARTS_DEFERRABLE", "false").lower() in ("1", "true", "yes")

JOB_ID = "{{ var.value.get('modelarts_training_job_id', '" + DEFAULT_JOB_ID + "') }}"
DESTINATION = "{{ var.value.get('modelarts_archive_destination', '" + DEFAULT_DESTINATION + "') }}"

TASK_LOGS_ARCHIVED = Asset("modelarts_task_logs")
# [END howto_archive_logs_setup]

with DAG(
    dag_id="example_modelarts_archive_logs",
    schedule=None,
    start_date=datetime(2024, 1, 1),
    catchup=False,
    tags=["example", "modelarts"],
) as dag:
    # [START howto_operator_modelarts_archive_task_logs]
    archive_task_logs = ModelArtsArchiveTaskLogsOperator(
        task_id="archive_task_logs",
        training_job_id=JOB_ID,
        destination=DESTINATION,
        destination_conn_id=DESTINATION_CONN_ID,
        compression=COMPRESSION,
        poll_interval=POLL_INTERVAL,
        deferrable=DEFERRABLE,
        timeout=24 * 60 * 60,
        outlets=[TASK_LOGS_ARCHIVED],
    )
    # [END howto_operator_modelarts_archive_task_logs]

    @task
    def report(result: dict) -> None:
        """Print where each log went."""
        print(f"training job {result['training_job_id']} ({result['phase']}): manifest {result['manifest']}")
        for entry in result["tasks"]:
            print(f"  {entry['task_id']}: {entry['size']} bytes, sha256 {entry['sha256']} -> {entry['uri']}")

    report(archive_task_logs.output)
# [END howto_quickstart_archive_dag]
