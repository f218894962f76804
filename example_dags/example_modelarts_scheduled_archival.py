"""Every hour, archive the logs of each ModelArts training job that finished in the previous hour.

``finished_training_jobs`` lists terminal jobs through ``ModelArtsHook.list_training_jobs`` (created in
the last ``MODELARTS_ARCHIVE_LOOKBACK_HOURS`` hours, default 168) and keeps those whose end time falls in
the run's data interval (a manual run, whose interval is empty, covers the hour before its logical date);
``archive_task_logs`` is mapped over them (dynamic task mapping), one mapped
task instance per job, at most ``max_active_tis_per_dag`` at a time. Re-runs of an interval are cheap:
logs already archived intact are skipped.

ModelArts limits API calls per account (429 ``APIG.0308``). Each mapped task instance is its own process,
so the connection extra ``requests_per_second`` paces one of them; an Airflow pool caps how many run at
once across all workers: with a pool of N slots, set ``requests_per_second`` to the account's limit / N.

Configuration (environment, or Airflow Variables of the same name in lower case):
``MODELARTS_ARCHIVE_DESTINATION`` (default a local ``file://`` folder), ``MODELARTS_ARCHIVE_CONN_ID``,
``MODELARTS_ARCHIVE_COMPRESSION`` and ``MODELARTS_ARCHIVE_LOOKBACK_HOURS``; ``MODELARTS_ARCHIVE_POOL``
(environment only: the pool, created beforehand, e.g. ``airflow pools set modelarts_api 4 "ModelArts API"``;
default ``default_pool``).
"""

from __future__ import annotations

# [START howto_scheduled_archival_setup]
import os
import tempfile
from datetime import datetime, timedelta
from typing import Any

from airflow.sdk import DAG, Variable, task

from airflow_provider_modelarts.hooks.modelarts import ModelArtsHook
from airflow_provider_modelarts.operators.modelarts import ModelArtsArchiveTaskLogsOperator
from airflow_provider_modelarts.states import TERMINAL_PHASES

DEFAULT_DESTINATION = os.environ.get(
    "MODELARTS_ARCHIVE_DESTINATION", f"file://{tempfile.gettempdir()}/modelarts-archive"
)
DESTINATION = "{{ var.value.get('modelarts_archive_destination', '" + DEFAULT_DESTINATION + "') }}"
DESTINATION_CONN_ID = os.environ.get("MODELARTS_ARCHIVE_CONN_ID") or None
COMPRESSION = os.environ.get("MODELARTS_ARCHIVE_COMPRESSION") or None
DEFAULT_LOOKBACK_HOURS = os.environ.get("MODELARTS_ARCHIVE_LOOKBACK_HOURS", "168")
POOL = os.environ.get("MODELARTS_ARCHIVE_POOL", "default_pool")
INTERVAL = timedelta(hours=1)


def finished_at_ms(job: dict[str, Any]) -> int:
    """When a terminal job ended (epoch ms): its last running record, else start time + duration."""
    status = job.get("status") or {}
    records = status.get("running_records") or []
    if records and records[-1].get("end_at"):
        return int(records[-1]["end_at"]) * 1000
    start = int(status.get("start_time") or 0) or int((job.get("metadata") or {}).get("create_time") or 0)
    return start + int(status.get("duration") or 0)


# [END howto_scheduled_archival_setup]


with DAG(
    dag_id="example_modelarts_scheduled_archival",
    schedule="@hourly",
    start_date=datetime(2024, 1, 1),
    catchup=False,
    max_active_runs=1,
    tags=["example", "modelarts"],
) as dag:
    # [START howto_operator_modelarts_scheduled_archival]
    @task
    def finished_training_jobs(data_interval_start=None, data_interval_end=None) -> list[str]:
        """Ids of the jobs that reached a terminal phase in this run's data interval."""
        if data_interval_start == data_interval_end:  # a manual run: cover the hour before its logical date
            data_interval_start = data_interval_end - INTERVAL
        lookback_h = float(Variable.get("modelarts_archive_lookback_hours", DEFAULT_LOOKBACK_HOURS))
        start_ms = int(data_interval_start.timestamp() * 1000)
        end_ms = int(data_interval_end.timestamp() * 1000)
        jobs = ModelArtsHook().list_training_jobs(
            phases=sorted(p.value for p in TERMINAL_PHASES),
            created_after_ms=start_ms - int(lookback_h * 3600 * 1000),
            created_before_ms=end_ms,
        )
        ids = sorted(job["metadata"]["id"] for job in jobs if start_ms <= finished_at_ms(job) < end_ms)
        print(
            f"{len(ids)} training job(s) finished between {data_interval_start} and {data_interval_end}: {ids}"
        )
        return ids

    ModelArtsArchiveTaskLogsOperator.partial(
        task_id="archive_task_logs",
        destination=DESTINATION,
        destination_conn_id=DESTINATION_CONN_ID,
        compression=COMPRESSION,
        wait_for_completion=False,
        max_active_tis_per_dag=4,
        pool=POOL,  # shared with every DAG that calls ModelArts: caps concurrent callers across workers
    ).expand(training_job_id=finished_training_jobs())
    # [END howto_operator_modelarts_scheduled_archival]
