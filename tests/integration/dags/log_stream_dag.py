"""A sensor that streams a training job's logs; the test picks the job and the mode through the environment."""

from __future__ import annotations

import os
from datetime import datetime

from airflow.sdk import DAG

from airflow_provider_modelarts.sensors.modelarts import ModelArtsTrainingJobSensor

MODE = os.environ.get("STREAM_TEST_MODE", "poke")
TASKS = os.environ.get("STREAM_TEST_TASKS")

with DAG(dag_id="log_stream_test", schedule=None, start_date=datetime(2024, 1, 1), catchup=False):
    ModelArtsTrainingJobSensor(
        task_id="wait_and_stream",
        training_job_id=os.environ.get("STREAM_TEST_JOB_ID", "job-stream"),
        deferrable=MODE == "deferrable",
        mode="reschedule" if MODE == "reschedule" else "poke",
        poke_interval=float(os.environ.get("STREAM_TEST_POLL", "1")),
        timeout=300,
        push_log_urls=False,
        retries=0,
        stream_log_tasks=TASKS.split(",") if TASKS else None,
    )
