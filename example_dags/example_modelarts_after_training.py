"""Wait for a ModelArts training job without holding a worker slot, use its log links, then archive the logs.

1. ``wait_for_training`` (deferrable sensor) waits in the triggerer and, while the job runs, streams each
   new line of the workers' logs into its own task log (``[worker-0] <line>``); when the job is terminal
   it pushes one fresh log link per worker under the XCom key ``log_urls`` (``{task_id: {"url", "type",
   "expires_at"}}``). If the job fails, the task log ends with a failure digest (exit codes, end
   reason, latest events, the last log lines of each failed worker).
2. ``download_logs`` pulls those links and downloads each log before the links expire (about five
   minutes), reporting size, sha256 and the last line.
3. ``archive_logs`` copies every worker log to object storage with a manifest.

Configuration (environment, or Airflow Variables of the same name in lower case):
``MODELARTS_TRAINING_JOB_ID`` (default ``demo-train-ok``), ``MODELARTS_ARCHIVE_DESTINATION`` (default a
local ``file://`` folder) and ``MODELARTS_POLL_INTERVAL`` (seconds, default 30). The defaults match
``example_dags/demo_scenario.json`` for the local emulator.
"""

from __future__ import annotations

# [START howto_after_training_setup]
import hashlib
import os
import tempfile
from datetime import datetime, timezone

import requests
from airflow.sdk import DAG, task

from airflow_provider_modelarts.operators.modelarts import ModelArtsArchiveTaskLogsOperator
from airflow_provider_modelarts.sensors.modelarts import ModelArtsTrainingJobSensor

DEFAULT_JOB_ID = os.environ.get("MODELARTS_TRAINING_JOB_ID", "demo-train-ok")
DEFAULT_DESTINATION = os.environ.get(
    "MODELARTS_ARCHIVE_DESTINATION", f"file://{tempfile.gettempdir()}/modelarts-archive"
)
POLL_INTERVAL = float(os.environ.get("MODELARTS_POLL_INTERVAL", "30"))

JOB_ID = "{{ var.value.get('modelarts_training_job_id', '" + DEFAULT_JOB_ID + "') }}"
DESTINATION = "{{ var.value.get('modelarts_archive_destination', '" + DEFAULT_DESTINATION + "') }}"
# [END howto_after_training_setup]

with DAG(
    dag_id="example_modelarts_after_training",
    schedule=None,
    start_date=datetime(2024, 1, 1),
    catchup=False,
    tags=["example", "modelarts"],
) as dag:
    # [START howto_sensor_modelarts_training_job_deferrable]
    wait_for_training = ModelArtsTrainingJobSensor(
        task_id="wait_for_training",
        training_job_id=JOB_ID,
        deferrable=True,
        poke_interval=POLL_INTERVAL,
        timeout=6 * 60 * 60,
        # Live logs in this task's log while the job runs: the first worker and any that fail.
        stream_logs=True,
        stream_log_tasks=None,
    )
    # [END howto_sensor_modelarts_training_job_deferrable]

    # [START howto_use_modelarts_log_urls]
    @task
    def download_logs(ti=None) -> dict[str, dict[str, object]]:
        """Download each worker's log through the link the sensor pushed, before it expires."""
        log_urls = ti.xcom_pull(task_ids="wait_for_training", key="log_urls")
        if not log_urls:
            raise ValueError("wait_for_training pushed no log links")
        report: dict[str, dict[str, object]] = {}
        for task_id, link in log_urls.items():
            expires_at = datetime.fromisoformat(link["expires_at"])
            left = (expires_at - datetime.now(timezone.utc)).total_seconds()
            print(f"{task_id}: {link['type']} link, {left:.0f} s left before it expires")
            digest, size, last_line = hashlib.sha256(), 0, b""
            with requests.get(link["url"], stream=True, timeout=60) as response:
                response.raise_for_status()
                for chunk in response.iter_content(chunk_size=1 << 20):
                    digest.update(chunk)
                    size += len(chunk)
                    last_line = (last_line + chunk).rstrip(b"\n").rsplit(b"\n", 1)[-1][-500:]
            report[task_id] = {
                "bytes": size,
                "sha256": digest.hexdigest(),
                "last_line": last_line.decode("utf-8", "replace"),
            }
            print(f"{task_id}: {size} bytes, sha256 {digest.hexdigest()}")
        return report

    # [END howto_use_modelarts_log_urls]

    archive_logs = ModelArtsArchiveTaskLogsOperator(
        task_id="archive_logs",
        training_job_id=JOB_ID,
        destination=DESTINATION,
        poll_interval=POLL_INTERVAL,
    )

    wait_for_training >> download_logs() >> archive_logs
