"""The real Airflow path: a scheduler with LocalExecutor, a separate triggerer and the API server.

``airflow dags test`` runs everything in one process, so it never proves that a deferral survives
crossing processes. These tests start the components as ``airflow standalone`` does (fresh
``AIRFLOW_HOME``, SQLite, LocalExecutor, one shared JWT secret, workers reaching the execution API
over HTTP), trigger a DAG run with the CLI and wait for it.

SQLite works with LocalExecutor in Airflow 3 (``airflow standalone`` runs exactly that); the only
settings needed are a shared ``[api_auth] jwt_secret`` so the API server accepts the tokens the
scheduler hands to workers, ``[core] execution_api_server_url`` pointing at the API server, and a
small ``parallelism`` so the single-writer database is not contended. DAGs are written to the database
with ``airflow dags reserialize`` instead of running a ``dag-processor``, which saves a process.
"""

from __future__ import annotations

import hashlib
import json
import textwrap
import time
from pathlib import Path

import pytest
import requests

from tests.fixtures.airflow_cli import REPO_ROOT
from tests.fixtures.airflow_cluster import AirflowCluster, airflow_cluster, trigger_dag_run

pytestmark = [pytest.mark.slow, pytest.mark.integration, pytest.mark.timeout(420)]

HERE_DAGS = Path(__file__).with_name("dags")


def _assert_went_through_triggerer(cluster: AirflowCluster, dag_id: str, run_id: str, task_id: str) -> None:
    """The deferral really crossed processes.

    The worker logged the deferral, the trigger's own log (``attempt=N.log.trigger.<job id>.log``) was
    written by a ``TriggererJob`` (not the scheduler) and shows the trigger fired, and the task ran a
    second time on a worker after the event.
    """
    task_log = cluster.task_logs(dag_id, run_id, task_id)
    assert "Pausing task as DEFERRED" in task_log, f"{task_id} never deferred:\n{task_log[-3000:]}"
    assert task_log.count("::group::Pre Execute") >= 2, f"{task_id} never resumed on a worker:\n{task_log}"
    base = cluster.home / "logs" / f"dag_id={dag_id}" / f"run_id={run_id}" / f"task_id={task_id}"
    # The triggerer writes a trigger's log file asynchronously: after many streamed lines its last line can
    # land some seconds after the run has finished, so wait for it (bounded) instead of reading once.
    deadline = time.monotonic() + 60
    while True:
        trigger_logs = sorted(base.glob("*.trigger.*.log"))
        trigger_text = "\n".join(p.read_text() for p in trigger_logs)
        if "Trigger fired event" in trigger_text or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert trigger_logs, f"no trigger log next to the task log in {base}: {sorted(base.iterdir())}"
    assert "Trigger fired event" in trigger_text, trigger_text[-5000:]
    job_ids = {int(p.name.rsplit(".", 2)[-2]) for p in trigger_logs}
    job_types = {
        row[0] for job_id in job_ids for row in cluster.query("SELECT job_type FROM job WHERE id = ?", job_id)
    }
    assert job_types == {"TriggererJob"}, f"trigger ran in {job_types}, not the separate triggerer"


def _plugin_from_docs() -> str:
    """The plugin snippet exactly as ``docs/sensor.md`` documents it (section "Extra links")."""
    text = (REPO_ROOT / "docs" / "sensor.md").read_text()
    block = text.split("# plugins/modelarts_links.py", 1)[1].split("```", 1)[0]
    return textwrap.dedent(block)


def _api_token(cluster: AirflowCluster) -> str:
    """A JWT for the simple auth manager's generated ``admin`` user."""
    passwords = json.loads((cluster.home / "simple_auth_manager_passwords.json.generated").read_text())
    response = requests.post(
        f"http://127.0.0.1:{cluster.port}/auth/token",
        json={"username": "admin", "password": passwords["admin"]},
        timeout=10,
    )
    response.raise_for_status()
    return str(response.json()["access_token"])


def _task_links(
    cluster: AirflowCluster, token: str, dag_id: str, run_id: str, task_id: str
) -> tuple[dict, float]:
    """``GET .../taskInstances/{task_id}/links`` from the API server: the links and the call's seconds."""
    started = time.monotonic()
    response = requests.get(
        f"http://127.0.0.1:{cluster.port}/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/links",
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )
    elapsed = time.monotonic() - started
    assert response.status_code == 200, response.text
    return response.json()["extra_links"], elapsed


def test_deferral_crosses_scheduler_worker_and_triggerer(tmp_path: Path) -> None:
    marker_dir = tmp_path / "markers"
    marker_dir.mkdir()
    dag_id = "reliability_deferral_smoke"
    run_id = "reliability_smoke_1"
    started = time.monotonic()
    with airflow_cluster(
        tmp_path / "home", HERE_DAGS, {"RELIABILITY_MARKER_DIR": str(marker_dir)}
    ) as cluster:
        trigger_dag_run(cluster, dag_id, run_id)
        state = cluster.wait_dag_run(dag_id, run_id, timeout=180)
        tis = cluster.task_states(dag_id, run_id)
        assert state == "success", f"run ended {state}: {tis}\n{cluster.diagnostics()}"
        assert tis["wait_deferred"][0] == "success"
        assert tis["write_marker"][0] == "success"
        assert (marker_dir / f"{run_id}.done").read_text() == "write_marker"
        _assert_went_through_triggerer(cluster, dag_id, run_id, "wait_deferred")
    print(f"real scheduler smoke run: {time.monotonic() - started:.1f}s end to end")


def test_provider_deferrable_sensor_and_archive_through_real_scheduler(
    tmp_path: Path, emulator_factory
) -> None:
    """``example_modelarts_after_training`` end to end: the deferrable sensor waits in the separate triggerer,
    the log links it pushes are used by a downstream task, and the archive lands complete and verified.

    ``AIRFLOW_HOME/plugins`` holds the plugin from ``docs/sensor.md`` that registers
    :class:`~airflow_provider_modelarts.links.modelarts.ModelArtsTaskLogPreviewLink` as a global extra
    link: each time the API server is asked for the sensor's links it mints a new OBS link that serves
    the log, while the link from the previous view has expired."""
    import shutil
    from urllib.parse import parse_qs, urlsplit

    from airflow_provider_modelarts.emulator import DEFAULT_SK
    from tests.reliability._secrets import find_leaks, read_tree

    dag_id = "example_modelarts_after_training"
    dags = tmp_path / "dags"
    dags.mkdir()
    shutil.copy(REPO_ROOT / "example_dags" / f"{dag_id}.py", dags)
    archive = tmp_path / "archive"
    emu = emulator_factory({"jobs": []})
    job_id = "rs-train"
    tasks = {"worker-0": 3 * 1024 * 1024 + 17, "worker-1": 1024 * 1024}
    env = {
        "AIRFLOW_CONN_MODELARTS_DEFAULT": emu.connection_json(),
        "MODELARTS_TRAINING_JOB_ID": job_id,
        "MODELARTS_ARCHIVE_DESTINATION": archive.as_uri(),
        "MODELARTS_POLL_INTERVAL": "1",
    }
    run_id = "reliability_provider_1"
    plugins = tmp_path / "home" / "plugins"
    plugins.mkdir(parents=True)
    (plugins / "modelarts_links.py").write_text(_plugin_from_docs())
    with airflow_cluster(tmp_path / "home", dags, env) as cluster:
        # The job starts now and finishes ~35 s later (CLI, scheduling and worker start take 10-20 s on
        # 2 cores), so the sensor finds it still running and defers.
        emu.add_job(
            {
                "id": job_id,
                "name": "reliability-real-scheduler",
                "timeline": [
                    {"phase": "Pending", "at": 0},
                    {"phase": "Running", "at": 1},
                    {"phase": "Completed", "at": 35},
                ],
                "tasks": [
                    {"id": t, "exit_code": 0, "log": {"generate": {"size": size, "seed": i + 11}}}
                    for i, (t, size) in enumerate(tasks.items())
                ],
            }
        )
        trigger_dag_run(cluster, dag_id, run_id)
        state = cluster.wait_dag_run(dag_id, run_id, timeout=180)
        tis = cluster.task_states(dag_id, run_id)
        assert state == "success", f"run ended {state}: {tis}\n{cluster.diagnostics()}"
        _assert_went_through_triggerer(cluster, dag_id, run_id, "wait_for_training")

        manifest = json.loads((archive / job_id / "manifest.json").read_text())
        assert manifest["complete"] is True
        for task, size in tasks.items():
            final = archive / job_id / f"{task}.log"
            assert final.stat().st_size == size
            entry = next(e for e in manifest["tasks"] if e["task_id"] == task)
            assert entry["sha256"] == emu.log_sha256(job_id, task)

        # The global preview link, resolved by the API server at every view. Links now live 4 s, and the
        # second view comes after the first view's link has expired.
        preview = "ModelArts Task Log (preview)"
        token = _api_token(cluster)
        emu.knobs.link_ttl = 4
        views: list[tuple[str, int, float]] = []
        for view in range(2):
            if views:
                time.sleep(max(0.0, views[-1][1] - time.time()) + 0.2)
            before = dict(emu.counters)
            links, elapsed = _task_links(cluster, token, dag_id, run_id, "wait_for_training")
            after = dict(emu.counters)
            console = links["ModelArts Training Job"]
            assert console and job_id in console, links
            url = links[preview]
            assert url and url.startswith(f"{emu.url}/"), links
            assert after.get("log_url", 0) == before.get("log_url", 0) + 1, (before, after)
            expires = int(parse_qs(urlsplit(url).query)["Expires"][0])
            assert expires > time.time(), (url.split("?")[0], expires)
            body = requests.get(url, timeout=30)
            assert body.status_code == 200, body.text[:300]
            assert hashlib.sha256(body.content).hexdigest() == emu.log_sha256(job_id, "worker-0")
            views.append((url, expires, elapsed))
            print(f"links view {view + 1}: {elapsed * 1000:.0f} ms")
        (first_url, first_expires, _), (second_url, second_expires, _) = views
        assert second_expires > first_expires and second_url != first_url
        expired = requests.get(first_url, timeout=30)
        assert expired.status_code == 403 and "Request has expired" in expired.text, expired.text[:300]
        # A task that stored no job gets no preview link and costs ModelArts nothing.
        before_log_url = emu.counters["log_url"]
        links, _ = _task_links(cluster, token, dag_id, run_id, "download_logs")
        assert links.get(preview) is None, links
        assert emu.counters["log_url"] == before_log_url
        # ModelArts answering slower than the link's 3 s timeout: the view still answers, with the
        # console link in place of the preview.
        emu.knobs.latency = 6
        links, elapsed = _task_links(cluster, token, dag_id, run_id, "wait_for_training")
        emu.knobs.latency = 0
        print(f"links view with ModelArts 6 s slow: {elapsed * 1000:.0f} ms")
        assert links[preview] == links["ModelArts Training Job"], links
        assert elapsed < 5.5, elapsed
        # A connection stored in the metadata database (created through the REST API, unknown to the
        # environment) serves the link too: the API server reads connections from its database.
        api = f"http://127.0.0.1:{cluster.port}/api/v2"
        auth = {"Authorization": f"Bearer {token}"}
        conn = json.loads(emu.connection_json())
        created = requests.post(
            f"{api}/connections",
            headers=auth,
            json={
                "connection_id": "modelarts_in_db",
                "conn_type": conn["conn_type"],
                "login": conn["login"],
                "password": conn["password"],
                "extra": json.dumps(conn["extra"]),
            },
            timeout=30,
        )
        assert created.status_code == 201, created.text
        xcom_url = f"{api}/dags/{dag_id}/dagRuns/{run_id}/taskInstances/wait_for_training/xcomEntries"
        stored = requests.get(f"{xcom_url}/modelarts_training_job", headers=auth, timeout=30).json()["value"]
        assert stored["modelarts_conn_id"] == "modelarts_default", stored
        patched = requests.patch(
            f"{xcom_url}/modelarts_training_job",
            headers=auth,
            json={"value": {**stored, "modelarts_conn_id": "modelarts_in_db"}},
            timeout=30,
        )
        assert patched.status_code == 200, patched.text
        before_log_url = emu.counters["log_url"]
        links, elapsed = _task_links(cluster, token, dag_id, run_id, "wait_for_training")
        print(f"links view with the connection in the database: {elapsed * 1000:.0f} ms")
        assert (links[preview] or "").startswith(f"{emu.url}/"), links
        assert emu.counters["log_url"] == before_log_url + 1
        emu.knobs.link_ttl = 300

        # Task logs as Airflow stores them, and every component's output: no SK, no link signature.
        everything = read_tree(cluster.home / "logs") + "".join(cluster.output(n) for n in cluster.procs)
        assert "wait_for_training" in everything
        leaks = find_leaks(everything, [DEFAULT_SK])
        assert not leaks, "\n".join(leaks)
        xcom_rows = cluster.query(
            "SELECT key, value FROM xcom WHERE dag_id = ? AND run_id = ?", dag_id, run_id
        )
        xcom_text = "\n".join(f"{k}={v!s}" for k, v in xcom_rows)
        assert "log_urls" in xcom_text
        assert DEFAULT_SK not in xcom_text
