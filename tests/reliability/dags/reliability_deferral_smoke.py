"""A tiny DAG whose only wait is a deferral, so a run proves the scheduler -> triggerer -> worker path."""

from __future__ import annotations

import os
from datetime import datetime, timedelta
from pathlib import Path

from airflow.providers.standard.operators.python import PythonOperator
from airflow.providers.standard.sensors.time_delta import TimeDeltaSensor
from airflow.sdk import DAG


def _write_marker(**context) -> str:
    marker = Path(os.environ["RELIABILITY_MARKER_DIR"]) / f"{context['run_id']}.done"
    marker.write_text(context["ti"].task_id)
    return str(marker)


with DAG(
    dag_id="reliability_deferral_smoke",
    start_date=datetime(2024, 1, 1),
    schedule=None,
    catchup=False,
    tags=["reliability"],
) as dag:
    wait = TimeDeltaSensor(task_id="wait_deferred", delta=timedelta(seconds=5), deferrable=True, timeout=120)
    done = PythonOperator(task_id="write_marker", python_callable=_write_marker)
    wait >> done
