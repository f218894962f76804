"""Run the example DAGs against the local ModelArts emulator and show what they produced.

Started by ``scripts/demo.sh`` inside ``.venv``. It:

1. creates a temporary ``AIRFLOW_HOME`` with SQLite and runs ``airflow db migrate``;
2. starts the emulator (``python -m airflow_provider_modelarts.emulator``) with the demo scenario: a
   two-worker training job that runs for a few seconds and writes several MB of logs, and a job that fails;
3. starts an SMTP server on 127.0.0.1 for the failure alert;
4. runs each example DAG with ``airflow dags test``;
5. prints where the logs were archived, the manifest, the log links pushed to XCom, the alert e-mail and
   the alert the emulator's SMN topic received.

Every process it starts runs in its own process group and is stopped on exit, on failure and on Ctrl-C.
Re-running is safe: the demo jobs' folders in the archive are replaced, nothing else is touched.
"""

from __future__ import annotations

import argparse
import html
import json
import os
import queue
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from pathlib import Path
from typing import Any, TextIO

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SCENARIO = ROOT / "example_dags" / "demo_scenario.json"
DEFAULT_ARCHIVE = ROOT / "archive"
RUN_LOGS = ROOT / ".demo" / "logs"

DEMO_AK = "DEMOAKEMULATOR000001"
DEMO_SK = "demo-secret-key-for-the-local-emulator-only"
DEMO_PROJECT_ID = "0123456789abcdef0123456789abcdef"
OK_JOB = "demo-train-ok"
FAILED_JOB = "demo-train-fail"
DEMO_REGION = "cn-north-4"
SMN_TOPIC_URN = f"urn:smn:{DEMO_REGION}:{DEMO_PROJECT_ID}:modelarts-alerts"


@dataclass
class DagRunPlan:
    """One ``airflow dags test`` run and the DAG-run state it should end in."""

    dag_id: str
    expect_state: str = "success"
    env: dict[str, str] = field(default_factory=dict)
    conf: dict[str, Any] | None = None


def plans(archive: Path, smtp_port: int | None) -> list[DagRunPlan]:
    """What the demo runs, in order. DAGs that are not in ``example_dags/`` are skipped."""
    common = {
        "MODELARTS_TRAINING_JOB_ID": OK_JOB,
        "MODELARTS_ARCHIVE_DESTINATION": archive.as_uri(),
        "MODELARTS_POLL_INTERVAL": "2",
    }
    return [
        # The training job is still running when this starts, so the sensor defers to the trigger.
        DagRunPlan("example_modelarts_after_training", env=common),
        # Same job, already archived intact by the DAG above: the re-run skips the downloads.
        DagRunPlan("example_modelarts_archive_logs", env=common),
        DagRunPlan(
            "example_modelarts_failure_alert",
            expect_state="failed",
            env={
                **common,
                "MODELARTS_TRAINING_JOB_ID": FAILED_JOB,
                "MODELARTS_ALERT_SMN_TOPIC_URN": SMN_TOPIC_URN,
                **({"MODELARTS_ALERT_EMAIL": "ml-team@example.com"} if smtp_port else {}),
            },
        ),
        # Lists the jobs that finished in the run's data interval (both demo jobs) and archives each one;
        # the completed job is already archived intact, so it is skipped.
        DagRunPlan("example_modelarts_scheduled_archival", env=common),
    ]


class Progress:
    """Step lines with the time elapsed since the demo started."""

    def __init__(self, out: TextIO = sys.stdout) -> None:
        self.start = time.monotonic()
        self.out = out

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def step(self, message: str) -> None:
        self.line(f"==> {message}")

    def line(self, message: str) -> None:
        print(f"[{self.elapsed():6.1f}s] {message}", file=self.out, flush=True)

    def detail(self, message: str) -> None:
        print(f"          {message}", file=self.out, flush=True)


class DemoError(RuntimeError):
    """A step of the demo failed; the message says which and where its log is."""


class Processes:
    """Children started by the demo, each in its own process group, all stopped by :meth:`stop_all`."""

    def __init__(self) -> None:
        self.children: list[subprocess.Popen] = []

    def start(self, cmd: list[str], **kwargs: Any) -> subprocess.Popen:
        proc = subprocess.Popen(cmd, start_new_session=True, **kwargs)
        self.children.append(proc)
        return proc

    @staticmethod
    def stop(proc: subprocess.Popen, grace: float = 5.0) -> None:
        if proc.poll() is None:
            with suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                with suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        # Anything the child left behind in its group (e.g. a task runner's supervisor) goes too.
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)

    def stop_all(self) -> None:
        for proc in reversed(self.children):
            self.stop(proc)
        self.children.clear()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def clean_environment() -> dict[str, str]:
    """The caller's environment without any Airflow settings, so the demo's own ones are the only ones."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def start_emulator(procs: Processes, scenario: Path, log_path: Path, timeout: float = 60) -> str:
    """Start the emulator on a free port and return its base URL (its first stdout line)."""
    cmd = [
        sys.executable,
        "-m",
        "airflow_provider_modelarts.emulator",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--scenario",
        str(scenario),
        "--ak",
        DEMO_AK,
        "--sk",
        DEMO_SK,
        "--project-id",
        DEMO_PROJECT_ID,
    ]
    log = log_path.open("w", encoding="utf-8")
    proc = procs.start(
        cmd, stdout=subprocess.PIPE, stderr=log, text=True, env=clean_environment(), cwd=str(ROOT)
    )
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)
            log.write(line)
            log.flush()
        lines.put(None)

    threading.Thread(target=pump, name="emulator-stdout", daemon=True).start()
    try:
        first = lines.get(timeout=timeout)
    except queue.Empty:
        raise DemoError(f"the emulator printed nothing within {timeout:.0f}s; see {log_path}") from None
    if first is None or not first.strip().startswith("http"):
        raise DemoError(f"the emulator did not start (first line {first!r}); see {log_path}")
    return first.strip().rstrip("/")


class _MailStore:
    """aiosmtpd handler keeping every message it receives."""

    def __init__(self) -> None:
        self.messages: list[bytes] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(envelope.original_content or envelope.content)
        return "250 Message accepted for delivery"


@contextmanager
def smtp_server() -> Iterator[tuple[int, _MailStore] | None]:
    """An SMTP server on 127.0.0.1 for the failure alert, or None if aiosmtpd is not installed."""
    try:
        from aiosmtpd.controller import Controller
    except ImportError:
        yield None
        return
    store = _MailStore()
    port = free_port()
    controller = Controller(store, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield port, store
    finally:
        controller.stop()


def airflow_env(home: Path, emulator_url: str, smtp_port: int | None) -> dict[str, str]:
    env = clean_environment()
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
            "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "example_dags"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
            "AIRFLOW_CONN_MODELARTS_DEFAULT": json.dumps(
                {
                    "conn_type": "modelarts",
                    "login": DEMO_AK,
                    "password": DEMO_SK,
                    "extra": {
                        "project_id": DEMO_PROJECT_ID,
                        "endpoint": emulator_url,
                        "region": DEMO_REGION,
                        "smn_endpoint": emulator_url,
                    },
                }
            ),
        }
    )
    if smtp_port:
        env["AIRFLOW_CONN_SMTP_DEFAULT"] = json.dumps(
            {
                "conn_type": "smtp",
                "host": "127.0.0.1",
                "port": smtp_port,
                "extra": {
                    "disable_tls": True,
                    "disable_ssl": True,
                    "from_email": "airflow@example.com",
                    "timeout": 10,
                    "retry_limit": 0,
                },
            }
        )
        env["AIRFLOW__SMTP__SMTP_HOST"] = "127.0.0.1"
        env["AIRFLOW__SMTP__SMTP_PORT"] = str(smtp_port)
        env["AIRFLOW__SMTP__SMTP_STARTTLS"] = "False"
        env["AIRFLOW__SMTP__SMTP_SSL"] = "False"
        env["AIRFLOW__SMTP__SMTP_MAIL_FROM"] = "airflow@example.com"
    return env


_LOG_LINE = re.compile(r"^\S+Z \[(?P<level>\w+)\s*\] (?P<msg>.*?)\s+\[(?P<logger>[\w.]+)\](?P<rest>.*)$")
_STATE = re.compile(r"new_state=(\w+)")
_TASK = re.compile(r"\[DAG TEST\] starting task_id=(\S+) map_index=(-?\d+)")
_EXCEPTION = re.compile(
    r"^(?P<name>(?:[A-Za-z_][\w]*\.)*[A-Za-z_]\w*(?:Error|Exception|Failed)): (?P<msg>.+)$"
)


_STREAMED = re.compile(r"^\s*\[worker-\d+\] ")
STREAMED_SHOWN = 4


MAX_SHOWN = 300
"""Longest message shown on the console; longer ones end at a space with an ellipsis (the log keeps all)."""
_RATE = re.compile(r"archived (?P<size>\d+ B|[\d.]+ KiB) to .* in [\d.]+s(?P<rate> \([\d.]+ MB/s\))")


def shorten(text: str, limit: int = MAX_SHOWN) -> str:
    """``text`` if it fits, else cut at the last space before ``limit`` and marked with an ellipsis.

    Never cuts inside a word, a path or a hash; a single word longer than ``limit`` is kept whole.
    """
    if len(text) <= limit:
        return text
    cut = text.rfind(" ", 0, limit)
    return text if cut <= 0 else f"{text[:cut]} …"


def readable(msg: str) -> str:
    """A provider log message for the console: no throughput figure for logs under 1 MiB (the time of such
    a copy is the time of its requests, so MB/s says nothing), and long messages shortened at a space."""
    if match := _RATE.search(msg):
        msg = msg[: match.start("rate")] + msg[match.end("rate") :]
    return shorten(msg)


def summarise(line: str) -> str | None:
    """The console version of one line of ``airflow dags test`` output, or None to keep it in the log only."""
    match = _LOG_LINE.match(line.rstrip())
    if not match:
        # The last line of a traceback names the exception and its message.
        error = _EXCEPTION.match(line.rstrip())
        return f"  {error['name'].rsplit('.', 1)[-1]}: {shorten(error['msg'])}" if error else None
    msg, logger, rest = match["msg"], match["logger"], match["rest"]
    if task := _TASK.search(msg):
        return f"task {task[1]}{f'[{task[2]}]' if task[2] != '-1' else ''} started"
    if msg.startswith("Task instance state updated") and (state := _STATE.search(rest)):
        return f"  -> {state[1]}" if state[1] in ("success", "failed", "deferred", "skipped") else None
    if "modelarts" in logger.lower():
        return f"  {readable(msg)}"
    return None


def run_dag(
    procs: Processes, progress: Progress, plan: DagRunPlan, env: dict[str, str], timeout: float
) -> tuple[int, Path]:
    """``airflow dags test`` one DAG; returns its exit code and the path of its full output."""
    log_path = RUN_LOGS / f"{plan.dag_id}.log"
    cmd = [sys.executable, "-m", "airflow", "dags", "test", plan.dag_id]
    if plan.conf is not None:
        cmd += ["--conf", json.dumps(plan.conf)]
    with log_path.open("w", encoding="utf-8") as log:
        proc = procs.start(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**env, **plan.env},
            cwd=str(ROOT),
        )
        lines: queue.Queue[str | None] = queue.Queue()

        def pump() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                lines.put(line)
            lines.put(None)

        threading.Thread(target=pump, name=f"{plan.dag_id}-stdout", daemon=True).start()
        started = last_output = time.monotonic()
        streamed = 0
        while True:
            try:
                line = lines.get(timeout=1)
            except queue.Empty:
                line = ""
            if line is None:
                break
            if line:
                log.write(line)
                if shown := summarise(line):
                    if _STREAMED.match(shown):
                        # Live log lines streamed by the sensor: show a few, the rest stay in the log.
                        streamed += 1
                        if streamed > STREAMED_SHOWN:
                            if streamed == STREAMED_SHOWN + 1:
                                progress.line(f"    ... more streamed log lines in {log_path}")
                            continue
                    progress.line(f"  {shown}")
                    last_output = time.monotonic()
            now = time.monotonic()
            if now - started > timeout:
                procs.stop(proc)
                raise DemoError(f"{plan.dag_id} did not finish within {timeout:.0f}s; see {log_path}")
            if now - last_output >= 10:
                progress.line(f"  ... still running ({now - started:.0f}s)")
                last_output = now
        return proc.wait(), log_path


def show_errors(progress: Progress, log_path: Path, limit: int = 15) -> None:
    """Print the error lines of a DAG run's output, for a run that did not end as expected."""
    lines = log_path.read_text(encoding="utf-8", errors="replace").splitlines()
    errors = [line for line in lines if "[error" in line or _EXCEPTION.match(line)]
    for line in errors[-limit:]:
        progress.detail(f"  ! {line[:300]}")


def query(db: Path, sql: str, *args: Any) -> list[tuple]:
    with sqlite3.connect(db) as conn:
        return conn.execute(sql, args).fetchall()


def dag_run_state(db: Path, dag_id: str) -> str | None:
    rows = query(db, "SELECT state FROM dag_run WHERE dag_id = ? ORDER BY id DESC LIMIT 1", dag_id)
    return rows[0][0] if rows else None


def task_states(db: Path, dag_id: str) -> list[tuple[str, str]]:
    rows = query(
        db,
        "SELECT ti.task_id, ti.map_index, ti.state FROM task_instance ti JOIN dag_run dr "
        "ON ti.dag_id = dr.dag_id AND ti.run_id = dr.run_id WHERE ti.dag_id = ? "
        "AND dr.id = (SELECT MAX(id) FROM dag_run WHERE dag_id = ?) ORDER BY ti.start_date",
        dag_id,
        dag_id,
    )
    return [(f"{task}[{index}]" if index >= 0 else task, state) for task, index, state in rows]


def _links_in(value: Any, path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every ``{"url": ...}`` mapping inside an XCom value, with where it was found."""
    if isinstance(value, dict):
        if isinstance(value.get("url"), str) and value["url"].startswith("http"):
            yield path, value
            return
        for key, item in value.items():
            yield from _links_in(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _links_in(item, f"{path}[{i}]")


def xcom_links(db: Path, dag_ids: list[str]) -> list[tuple[str, str, str, str, dict[str, Any]]]:
    """(dag_id, task_id, key, where, link) for every log link pushed to XCom by the demo's DAG runs."""
    found = []
    seen = set()
    marks = ",".join("?" * len(dag_ids))
    rows = query(
        db,
        f"SELECT dag_id, task_id, key, value FROM xcom WHERE dag_id IN ({marks}) ORDER BY timestamp",
        *dag_ids,
    )
    for dag_id, task_id, key, raw in rows:
        try:
            value = json.loads(raw) if isinstance(raw, (str, bytes)) else raw
        except ValueError:
            continue
        for where, link in _links_in(value):
            if (dag_id, task_id, link["url"]) not in seen:
                seen.add((dag_id, task_id, link["url"]))
                found.append((dag_id, task_id, key, where, link))
    return found


def manifests(archive: Path, job_ids: list[str]) -> list[Path]:
    return [p for job in job_ids for p in sorted((archive / job).rglob("manifest.json"))]


def smn_messages(emulator_url: str) -> list[dict[str, Any]]:
    """The messages the emulator's SMN topics received (``GET /_emulator/smn/messages``)."""
    with urllib.request.urlopen(f"{emulator_url}/_emulator/smn/messages", timeout=10) as response:
        return list(json.loads(response.read())["messages"])


def show_smn(progress: Progress, messages: list[dict[str, Any]]) -> None:
    print()
    progress.step(f"Failure alerts published to the emulator's SMN topic ({len(messages)})")
    for message in messages:
        progress.detail(f"Topic: {message['topic_urn']}  Subject: {message.get('subject')}")
        progress.detail(f"message_id {message['message_id']}")
        entries = message.get("message_structure") or {"default": message.get("message") or ""}
        for protocol, text in entries.items():
            lines = [line for line in str(text).strip().splitlines() if line.strip()]
            progress.detail(f"  [{protocol}] ({len(text.encode('utf-8')):,} bytes)")
            for line in lines[:30]:
                progress.detail(f"  | {line}")
        sms = message["sms"]
        cut = ", cut by SMN" if sms["truncated"] else ""
        progress.detail(f"  SMS subscribers receive ({sms['parts']} part(s){cut}): {sms['delivered']}")


def show_results(
    progress: Progress,
    archive: Path,
    db: Path,
    dag_ids: list[str],
    mail: _MailStore | None,
    *,
    smn: list[dict[str, Any]] | None = None,
) -> None:
    print()
    progress.step(f"Logs archived under {archive}")
    for job in (OK_JOB, FAILED_JOB):
        folder = archive / job
        if not folder.exists():
            continue
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            progress.detail(
                f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}  {path.stat().st_size:>10,} bytes"
            )
    for manifest in manifests(archive, [OK_JOB, FAILED_JOB]):
        print()
        progress.step(f"Manifest {manifest}")
        print(json.dumps(json.loads(manifest.read_text(encoding="utf-8")), indent=2))

    links = xcom_links(db, dag_ids)
    print()
    progress.step(f"Log links pushed to XCom ({len(links)})")
    for dag_id, task_id, key, where, link in links:
        kind = link.get("type", "link")
        expires = link.get("expires_at", "?")
        label = where or key
        progress.detail(f"{dag_id}.{task_id} [{key}] {label}: {kind} link, expires at {expires}")
        progress.detail(f"  {link['url']}")
    if links:
        progress.detail("These links work without credentials until they expire (5 minutes on ModelArts);")
        progress.detail("they point at the local emulator, so showing the signature here is harmless.")

    if mail is not None and mail.messages:
        print()
        progress.step(f"Failure alert e-mails received by the local SMTP server ({len(mail.messages)})")
        for raw in mail.messages:
            msg = message_from_bytes(raw, policy=policy.default)
            progress.detail(f"To: {msg['To']}  Subject: {msg['Subject']}")
            body = msg.get_body(preferencelist=("plain", "html"))
            text = body.get_content() if body is not None else ""
            if body is not None and body.get_content_subtype() == "html":
                text = html_to_text(text)
            for line in [line for line in text.strip().splitlines() if line.strip()][:30]:
                progress.detail(f"  | {line}")
    if smn:
        show_smn(progress, smn)


_HTML_TAG = re.compile(r"</?(?:h\d|p|ul|ol|li|pre|b|i|em|strong|br|div|span|a)\b[^>]*>", re.IGNORECASE)
_HTML_LINK = re.compile(r'<a\s[^>]*href="([^"]*)"[^>]*>(.*?)</a>', re.IGNORECASE | re.DOTALL)
_HTML_BREAK = re.compile(r"<(?:/h\d|/p|/li|/ul|pre|/pre|br\s*/?)>", re.IGNORECASE)


def html_to_text(body: str) -> str:
    """Readable text of a simple HTML e-mail body: links as ``text <url>``, block ends as new lines."""
    body = _HTML_LINK.sub(lambda m: f"{m[2]} <{m[1]}>", body)
    body = _HTML_BREAK.sub(lambda m: m[0] + "\n", body)
    # Only known tags are removed, so text such as "<module>" in a traceback survives.
    return html.unescape(_HTML_TAG.sub("", body))


def reset_archive(archive: Path) -> None:
    """Remove the demo jobs' previous archives (only those) so the run shows a full archive again."""
    for job in (OK_JOB, FAILED_JOB):
        shutil.rmtree(archive / job, ignore_errors=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archive-dir", type=Path, default=DEFAULT_ARCHIVE, help="where logs are archived")
    parser.add_argument("--scenario", type=Path, default=DEFAULT_SCENARIO, help="emulator scenario file")
    parser.add_argument("--dag-timeout", type=float, default=300, help="seconds allowed per DAG run")
    parser.add_argument("--keep-home", action="store_true", help="keep the temporary AIRFLOW_HOME")
    parser.add_argument(
        "--keep-archive", action="store_true", help="do not clear the demo jobs' archives first"
    )
    return parser.parse_args(argv)


def _raise_system_exit(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    progress = Progress()
    procs = Processes()
    archive = args.archive_dir.resolve()
    home = Path(tempfile.mkdtemp(prefix="modelarts-demo-airflow-home-"))
    RUN_LOGS.mkdir(parents=True, exist_ok=True)
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _raise_system_exit)
    failures: list[str] = []
    try:
        with smtp_server() as smtp:
            smtp_port, mail = smtp if smtp else (None, None)
            progress.step(f"Temporary AIRFLOW_HOME {home} (SQLite): airflow db migrate")
            env = airflow_env(home, "http://127.0.0.1:0", smtp_port)
            migrate_log = RUN_LOGS / "db-migrate.log"
            with migrate_log.open("w", encoding="utf-8") as log:
                proc = procs.start(
                    [sys.executable, "-m", "airflow", "db", "migrate"],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                    cwd=str(ROOT),
                )
                if proc.wait() != 0:
                    raise DemoError(f"airflow db migrate failed; see {migrate_log}")

            # The emulator's clock starts now, so the training job is still running when the first DAG looks.
            progress.step(f"Starting the ModelArts emulator with {args.scenario.name}")
            url = start_emulator(procs, args.scenario.resolve(), RUN_LOGS / "emulator.log")
            progress.detail(f"ModelArts + OBS emulator at {url} (project {DEMO_PROJECT_ID})")
            if smtp_port:
                progress.detail(f"SMTP server at 127.0.0.1:{smtp_port}")
            env = airflow_env(home, url, smtp_port)

            if not args.keep_archive:
                reset_archive(archive)
            archive.mkdir(parents=True, exist_ok=True)
            db = home / "airflow.db"
            ran: list[str] = []
            for plan in plans(archive, smtp_port):
                if not (ROOT / "example_dags" / f"{plan.dag_id}.py").exists():
                    progress.step(f"{plan.dag_id}: not in example_dags/, skipped")
                    continue
                progress.step(f"airflow dags test {plan.dag_id}")
                code, log_path = run_dag(procs, progress, plan, env, args.dag_timeout)
                ran.append(plan.dag_id)
                state = dag_run_state(db, plan.dag_id)
                summary = ", ".join(f"{task}={st}" for task, st in task_states(db, plan.dag_id))
                verdict = "as expected" if state == plan.expect_state else f"EXPECTED {plan.expect_state}"
                progress.line(f"  DAG run {state} ({verdict}); tasks: {summary}; full output: {log_path}")
                if state != plan.expect_state:
                    show_errors(progress, log_path)
                    failures.append(
                        f"{plan.dag_id} ended {state} (exit code {code}), expected {plan.expect_state}"
                    )
            if not ran:
                raise DemoError("no example DAG found in example_dags/")
            show_results(progress, archive, db, ran, mail, smn=smn_messages(url))
    except KeyboardInterrupt:
        print()
        progress.step("Interrupted: stopping everything the demo started")
        return 130
    except DemoError as exc:
        progress.step(f"FAILED: {exc}")
        return 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        procs.stop_all()
        if args.keep_home:
            progress.detail(f"AIRFLOW_HOME kept at {home}")
        else:
            shutil.rmtree(home, ignore_errors=True)
        signal.signal(signal.SIGINT, signal.default_int_handler)
    print()
    if failures:
        progress.step("Demo finished with problems:")
        for failure in failures:
            progress.detail(failure)
        return 1
    progress.step(f"Demo finished in {progress.elapsed():.0f}s; all processes it started are stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
