"""A tiny DAG whose only wait is a deferral, so a run proves the scheduler -> triggerer -> worker path."""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path

from airflow.providers.standard.operators.python import PythonOperator
from airflow.providers.standard.sensors.date_time import DateTimeSensorAsync
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
    # The target is rendered when the task starts, so the task always defers, however late the
    # scheduler picks it up on a loaded machine.
    wait = DateTimeSensorAsync(
        task_id="wait_deferred",
        target_time="{{ (macros.datetime.utcnow() + macros.timedelta(seconds=6)).isoformat() }}",
        timeout=120,
    )
    done = PythonOperator(task_id="write_marker", python_callable=_write_marker)
    wait >> done
