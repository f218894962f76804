"""The README's demo runs end to end, prints what it promises, and leaves no process behind."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "scripts" / "demo.py"
SCENARIO = ROOT / "example_dags" / "demo_scenario.json"

pytestmark = pytest.mark.integration

sys.path.insert(0, str(DEMO.parent))
import demo  # noqa: E402 - scripts/ is not a package


def _start_demo(tmp_path: Path, *args: str) -> tuple[subprocess.Popen, Path]:
    scenario = tmp_path / "scenario.json"  # a unique path, so the emulator's command line identifies it
    shutil.copy(SCENARIO, scenario)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    proc = subprocess.Popen(
        [
            sys.executable,
            str(DEMO),
            "--archive-dir",
            str(tmp_path / "archive"),
            "--scenario",
            str(scenario),
            *args,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=str(ROOT),
        start_new_session=True,
    )
    return proc, scenario


def _leftovers(scenario: Path, home: str | None) -> list[str]:
    """Processes still running that the demo started: the emulator (by its scenario path) or Airflow (by home)."""
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            cmdline = " ".join(proc.info["cmdline"] or [])
            if str(scenario) in cmdline or (home and proc.environ().get("AIRFLOW_HOME") == home):
                found.append(f"{proc.pid}: {cmdline}")
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def _port_open(url: str) -> bool:
    host, port = re.match(r"http://([\d.]+):(\d+)", url).groups()  # type: ignore[union-attr]
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex((host, int(port))) == 0


def _kill_group(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_demo_runs_and_cleans_up(tmp_path):
    proc, scenario = _start_demo(tmp_path)
    try:
        out, _ = proc.communicate(timeout=840)
    finally:
        _kill_group(proc)
    print(out)
    assert proc.returncode == 0, out[-4000:]

    home = re.search(r"Temporary AIRFLOW_HOME (\S+)", out)
    url = re.search(r"emulator at (http://\S+)", out)
    assert home and url, out
    assert not Path(home[1]).exists(), "the temporary AIRFLOW_HOME was not removed"
    assert not _port_open(url[1]), "the emulator is still listening"
    assert _leftovers(scenario, home[1]) == []

    archive = tmp_path / "archive"
    assert f"Logs archived under {archive}" in out
    manifests = sorted(archive.rglob("manifest.json"))
    assert manifests, f"no manifest under {archive}"
    manifest = json.loads(manifests[0].read_text())
    assert "Manifest " in out and str(manifests[0]) in out
    logs = [p for p in archive.rglob("*") if p.is_file() and p.name != "manifest.json" and ".log" in p.name]
    assert len(logs) >= 2, logs  # both workers of the completed job
    assert json.dumps(manifest, indent=2).splitlines()[1] in out

    # A few live log lines streamed by the waiting sensor, then a pointer to the rest.
    streamed = re.findall(r"^\[\s*[\d.]+s\]\s+\[worker-\d+\] .+$", out, re.MULTILINE)
    assert 1 <= len(streamed) <= demo.STREAMED_SHOWN * len(demo.plans(tmp_path, None)), out[-4000:]
    assert re.search(r"Log links pushed to XCom \([1-9]\d*\)", out), out[-4000:]
    assert "expires at" in out
    # The failure alert also went to the emulator's SMN topic, and the demo shows what it received.
    assert "Failure alerts published to the emulator's SMN topic (1)" in out, out[-4000:]
    assert f"Topic: {demo.SMN_TOPIC_URN}" in out
    assert "| RuntimeError: CUDA out of memory" in out
    assert "SMS subscribers receive (1 part(s)): Airflow example_modelarts_failure_alert:" in out
    assert "Demo finished" in out


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_demo_stops_everything_on_ctrl_c(tmp_path):
    proc, scenario = _start_demo(tmp_path)
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 240
        for line in proc.stdout:
            lines.append(line)
            if "airflow dags test" in line or time.monotonic() > deadline:
                break
        assert any("airflow dags test" in line for line in lines), "".join(lines)
        time.sleep(3)  # let the DAG run get going
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal sends on Ctrl-C
        rest, _ = proc.communicate(timeout=60)
    finally:
        _kill_group(proc)
    out = "".join(lines) + rest
    assert proc.returncode == 130, out[-3000:]
    assert "Interrupted" in out
    home = re.search(r"Temporary AIRFLOW_HOME (\S+)", out)
    url = re.search(r"emulator at (http://\S+)", out)
    assert home and url, out
    time.sleep(1)
    assert not _port_open(url[1]), "the emulator is still listening"
    assert _leftovers(scenario, home[1]) == []


@pytest.mark.timeout(180)
def test_demo_fails_cleanly_when_the_emulator_cannot_start(tmp_path):
    bad = tmp_path / "broken.json"
    bad.write_text('{"jobs": [{"id": "x", "timeline": [{"phase": "NoSuchPhase", "at": 0}]}]}')
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    proc = subprocess.run(
        [sys.executable, str(DEMO), "--archive-dir", str(tmp_path / "archive"), "--scenario", str(bad)],
        capture_output=True,
        text=True,
        env=env,
        cwd=str(ROOT),
        timeout=150,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert "FAILED: the emulator did not start" in out
    home = re.search(r"Temporary AIRFLOW_HOME (\S+)", out)
    assert home and not Path(home[1]).exists()
    assert _leftovers(bad, home[1]) == []


def test_console_summary_of_dags_test_output():
    assert (
        demo.summarise(
            "2026-01-01T00:00:00.000000Z [info     ] [DAG TEST] starting task_id=archive map_index=3 "
            "[airflow.sdk.definitions.dag] loc=dag.py:1501"
        )
        == "task archive[3] started"
    )
    assert (
        demo.summarise(
            "2026-01-01T00:00:00.000000Z [info     ] Task instance state updated    "
            "[airflow.api_fastapi.execution_api.routes.task_instances] loc=x.py:1 new_state=failed rows_affected=1"
        )
        == "  -> failed"
    )
    assert (
        demo.summarise(
            "2026-01-01T00:00:00.000000Z [info     ] Pushed 2 preview log link(s) "
            "[airflow.task.operators.airflow_provider_modelarts.sensors.modelarts.ModelArtsTrainingJobSensor] loc=x"
        )
        == "  Pushed 2 preview log link(s)"
    )
    assert demo.summarise("airflow_provider_modelarts.sensors.modelarts.X Failed: job ended") is None
    assert demo.summarise("mod.ModelArtsTrainingJobFailed: job j ended in phase Failed") == (
        "  ModelArtsTrainingJobFailed: job j ended in phase Failed"
    )
    assert (
        demo.summarise("2026-01-01T00:00:00Z [info     ] Bulk-writing dags to db [airflow.x] count=1") is None
    )


def test_links_found_anywhere_in_an_xcom_value():
    link = {"url": "http://127.0.0.1:1/log?Expires=1&Signature=x", "type": "preview", "expires_at": "t"}
    value = {"training_job_id": "j", "log_urls": {"worker-0": link}, "tasks": [{"uri": "file:///a"}]}
    assert list(demo._links_in(value)) == [("log_urls.worker-0", link)]
    assert list(demo._links_in([link])) == [("[0]", link)]
    assert list(demo._links_in({"url": "file:///not-a-link"})) == []


def test_the_demo_environment_drops_the_callers_airflow_settings(monkeypatch):
    monkeypatch.setenv("AIRFLOW__CORE__DAGS_FOLDER", "/elsewhere")
    env = demo.airflow_env(Path("/tmp/home"), "http://127.0.0.1:1", None)
    assert env["AIRFLOW__CORE__DAGS_FOLDER"] == str(ROOT / "example_dags")
    assert env["AIRFLOW_HOME"] == "/tmp/home"
    conn = json.loads(env["AIRFLOW_CONN_MODELARTS_DEFAULT"])
    assert conn["conn_type"] == "modelarts" and conn["extra"]["endpoint"] == "http://127.0.0.1:1"
    assert "AIRFLOW_CONN_SMTP_DEFAULT" not in env


def test_alert_mail_shown_as_text_keeps_links_and_traceback():
    text = demo.html_to_text(
        '<ul><li><a href="http://127.0.0.1:1/l?a=1&amp;Signature=s">worker-0</a> until T</li></ul>'
        '<pre>  File "train.py", line 88, in <module>\nx &lt; y</pre>'
    )
    assert "worker-0 <http://127.0.0.1:1/l?a=1&Signature=s> until T" in text
    assert "in <module>" in text and "x < y" in text


def test_console_lines_are_never_cut_inside_a_path_or_a_hash():
    sha = "68e74359" * 8
    path = "file:///" + "/".join(["deep-folder-name"] * 30) + "/demo-train-ok/manifest.json"
    line = (
        "2026-01-01T00:00:00Z [info     ] demo-train-ok/worker-0: archived 4.0 MiB to "
        f"{path} in 0.1s (73.2 MB/s), sha256 {sha}, 1 connection(s), 0 restart(s) "
        "[airflow_provider_modelarts.transfer] loc=x"
    )
    shown = demo.summarise(line)
    assert shown is not None
    assert len(shown) <= demo.MAX_SHOWN + 10
    # Whatever is shown is whole words of the message, and a cut is marked.
    words = shown.strip().removesuffix(" …").split(" ")
    message = line.split("] ", 1)[1].split(" [airflow_provider", maxsplit=1)[0]
    assert words == message.split(" ")[: len(words)]
    assert shown.endswith(" …")
    short = demo.summarise(line.replace(path, "file:///a/worker-0.log"))
    assert short is not None and short.endswith("0 restart(s)") and sha in short


@pytest.mark.parametrize(
    ("size", "rate", "shown"),
    [
        ("4.0 MiB", "73.2", True),
        ("1.1 GiB", "900.0", True),
        ("12.5 KiB", "0.1", False),
        ("37 B", "0.0", False),
    ],
)
def test_throughput_shown_only_for_logs_of_a_mebibyte_or_more(size, rate, shown):
    line = (
        f"2026-01-01T00:00:00Z [info     ] job/worker-0: archived {size} to file:///a/w.log in 0.1s "
        f"({rate} MB/s), sha256 ab, 1 connection(s), 0 restart(s) [airflow_provider_modelarts.transfer] loc=x"
    )
    out = demo.summarise(line)
    assert out is not None
    assert (f"({rate} MB/s)" in out) is shown
    assert "MB/s" in out or "in 0.1s, sha256 ab" in out


def test_smn_messages_are_shown_in_the_demo_style():
    import io

    out = io.StringIO()
    message = {
        "topic_urn": "urn:smn:cn-north-4:p:t",
        "subject": "job j is Failed",
        "message_id": "m-1",
        "message": None,
        "message_structure": {"default": "line 1\n\nline 2", "sms": "short"},
        "sms": {"parts": 1, "delivered": "short", "truncated": False},
    }
    demo.show_smn(demo.Progress(out), [message])
    text = out.getvalue()
    assert "Failure alerts published to the emulator's SMN topic (1)" in text
    assert "Topic: urn:smn:cn-north-4:p:t  Subject: job j is Failed" in text
    assert "  | line 1\n" in text and "  | line 2\n" in text
    assert "[sms] (5 bytes)" in text
    assert "SMS subscribers receive (1 part(s)): short" in text
