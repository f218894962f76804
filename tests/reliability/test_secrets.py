"""Secrets stay secret: SK, IAM password, IAM tokens, security tokens and link signatures never reach a log.

* ``airflow dags test`` of the example DAGs (AK/SK with temporary credentials, and IAM token auth): the task
  logs as Airflow stores them under ``AIRFLOW_HOME/logs``, the command output, and XCom (which holds the
  links, as it should, but no credential);
* an in-process run under faults (dropped connections, throttling, token expiry) with every log record
  captured at DEBUG, plus exception messages;
* TLS verification is on by default; ``verify=false`` logs one warning per process, however many hooks.
"""

from __future__ import annotations

import json
import logging
import secrets
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import tenacity

from tests.fixtures.airflow_cli import airflow_env, dags_test, migrate
from tests.reliability._secrets import find_leaks, read_tree

pytestmark = [pytest.mark.integration]

MiB = 1024 * 1024


class Creds:
    """Unique credentials per test, so a hit can only be a leak."""

    def __init__(self) -> None:
        self.sk = "SK" + secrets.token_urlsafe(30)
        self.iam_password = "Pw/+" + secrets.token_urlsafe(16) + "=&"
        self.temp_ak = "TMPAK" + secrets.token_hex(8).upper()
        self.temp_sk = "TSK" + secrets.token_urlsafe(30)
        self.security_token = "STOKEN" + secrets.token_urlsafe(60)

    def all(self) -> list[str]:
        return [self.sk, self.iam_password, self.temp_sk, self.security_token]


def _scenario(job_id: str, phase_timeline: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {
        "jobs": [
            {
                "id": job_id,
                "name": job_id,
                "timeline": phase_timeline or [{"phase": "Completed", "at": 0}],
                "tasks": [
                    {"id": "worker-0", "exit_code": 0, "log": {"generate": {"size": 2 * MiB, "seed": 3}}},
                    {"id": "worker-1", "exit_code": 0, "log": {"text": "hello\nworld\n"}},
                ],
            }
        ]
    }


@pytest.fixture
def secret_emulator(emulator_factory):
    """An emulator with unique credentials that records every IAM token it issues."""
    creds = Creds()
    emu = emulator_factory(
        _scenario("sec-job"),
        sk=creds.sk,
        iam_password=creds.iam_password,
        temporary_credentials=(creds.temp_ak, creds.temp_sk, creds.security_token),
    )
    issued: list[str] = []
    original = emu._issue_token

    def recording(*args: Any, **kwargs: Any):
        token, doc = original(*args, **kwargs)
        issued.append(token)
        return token, doc

    emu._issue_token = recording
    return emu, creds, issued


def _temp_creds_conn(emu: Any, creds: Creds) -> str:
    conn = json.loads(emu.connection_json())
    conn["login"], conn["password"] = creds.temp_ak, creds.temp_sk
    conn["extra"]["security_token"] = creds.security_token
    return json.dumps(conn)


# ------------------------------------------------------------------------------------------------
# Example DAGs through `airflow dags test`
# ------------------------------------------------------------------------------------------------


def _airflow_env(home: Path, conn: str, archive: Path, job_id: str) -> dict[str, str]:
    return airflow_env(
        home,
        {
            # INFO, the default: at DEBUG, Airflow 3.3's in-process `dags test` supervisor itself logs every
            # MaskSecret request with its value (InProcessSupervisorComms.send), before any provider code.
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
            "AIRFLOW_CONN_MODELARTS_DEFAULT": conn,
            "MODELARTS_TRAINING_JOB_ID": job_id,
            "MODELARTS_ARCHIVE_DESTINATION": archive.as_uri(),
            "MODELARTS_POLL_INTERVAL": "1",
        },
    )


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_example_dag_task_logs_and_xcom_hold_no_secrets(secret_emulator, tmp_path):
    emu, creds, issued = secret_emulator
    home = tmp_path / "home"
    archive = tmp_path / "archive"
    runs = [
        # AK/SK with temporary credentials: SK, security token, link signatures.
        ("example_modelarts_after_training", _temp_creds_conn(emu, creds)),
        # IAM token auth: password and the issued token.
        ("example_modelarts_archive_logs", emu.connection_json(auth_type="token")),
    ]
    outputs = []
    env = _airflow_env(home, runs[0][1], archive, "sec-job")
    migrate(env)
    for dag_id, conn in runs:
        env = _airflow_env(home, conn, archive, "sec-job")
        result = dags_test(env, dag_id, timeout=240, check=False)
        outputs.append(result.stdout + result.stderr)
        db = sqlite3.connect(home / "airflow.db")
        state = db.execute(
            "SELECT state FROM dag_run WHERE dag_id = ? ORDER BY id DESC LIMIT 1", (dag_id,)
        ).fetchone()
        db.close()
        assert state == ("success",), f"{dag_id}: {state}\n{(result.stdout + result.stderr)[-4000:]}"
    assert issued, "token auth never asked IAM for a token"
    assert emu.counters["obs_get"] > 0, "no log link was used"

    # `dags test` runs the tasks in-process: their logs go to the command output (plus anything Airflow
    # files under AIRFLOW_HOME/logs). Task logs of a real scheduler run are scanned in test_real_scheduler.
    task_logs = read_tree(home / "logs") if (home / "logs").exists() else ""
    everything = task_logs + "".join(outputs)
    assert "sec-job" in everything and "worker-0" in everything, "task output was not captured"
    assert "archived" in everything, "the archive task's log lines are missing"
    leaks = find_leaks(everything, [*creds.all(), *issued])
    assert not leaks, "\n".join(leaks)

    db = sqlite3.connect(home / "airflow.db")
    rows = db.execute("SELECT dag_id, task_id, key, value FROM xcom").fetchall()
    db.close()
    xcom_text = "\n".join(str(r) for r in rows)
    assert "Signature=" in xcom_text, "the sensor's log links should be in XCom"
    xcom_leaks = find_leaks(xcom_text.replace("Signature=", "SIG="), [*creds.all(), *issued])
    assert not xcom_leaks, "\n".join(xcom_leaks)
    print(f"\nsecrets: scanned {len(everything) // 1024} KiB of task logs/output and {len(rows)} XCom rows")


# ------------------------------------------------------------------------------------------------
# In-process run under faults, every record captured
# ------------------------------------------------------------------------------------------------


@pytest.mark.timeout(120)
@pytest.mark.parametrize("auth", ["temporary-aksk", "token"])
def test_fault_run_logs_and_errors_hold_no_secrets(  # noqa: PLR0917
    secret_emulator, monkeypatch, tmp_path, caplog, capfd, auth
):
    from airflow.providers.common.compat.sdk import ObjectStoragePath

    from airflow_provider_modelarts import auth as auth_module
    from airflow_provider_modelarts.exceptions import ModelArtsError
    from airflow_provider_modelarts.hooks.modelarts import ModelArtsAsyncHook, ModelArtsHook
    from airflow_provider_modelarts.transfer import TrainingJobLogArchiver

    emu, creds, issued = secret_emulator
    conn = (
        _temp_creds_conn(emu, creds) if auth == "temporary-aksk" else emu.connection_json(auth_type="token")
    )
    monkeypatch.setenv("AIRFLOW_CONN_MODELARTS_DEFAULT", conn)
    auth_module.TOKEN_CACHE.clear()
    caplog.set_level(logging.DEBUG)
    emu.knobs.link_ttl = 2
    emu.knobs.drop_after_bytes = MiB + 333
    emu.knobs.drop_downloads = 2
    emu.knobs.throttle_ratio = 0.3
    emu.knobs.retry_after = 0
    emu.knobs.error_burst = 2
    if auth == "token":
        emu.knobs.expire_token_once = True

    def new_hook() -> ModelArtsHook:
        return ModelArtsHook(retry_wait=tenacity.wait_none(), max_retries=8)

    messages: list[str] = []
    hook = new_hook()
    job = hook.get_training_job("sec-job")
    links = [
        hook.get_task_log_url("sec-job", t, download=d)
        for t in ("worker-0", "worker-1")
        for d in (False, True)
    ]
    hook.preview_task_log("sec-job", "worker-1")
    TrainingJobLogArchiver(new_hook, ObjectStoragePath(f"file://{tmp_path}/a"), max_workers=2).archive(job)

    # Errors carry no secret either: an expired link, a missing job, and the async hook.
    emu.knobs.throttle_ratio = 0
    expired = links[0]
    emu.knobs.link_ttl = 300
    import time as _time

    _time.sleep(2.2)
    for bad in (lambda: hook.open_log_stream(expired), lambda: hook.get_training_job("no-such-job")):
        with pytest.raises(ModelArtsError) as info:
            bad()
        messages.append(f"{info.value!s} {info.value!r}")

    import asyncio

    async def async_calls() -> None:
        ahook = ModelArtsAsyncHook(retry_wait=tenacity.wait_none(), max_retries=8)
        try:
            await ahook.get_training_job("sec-job")
            links.append(await ahook.get_task_log_url("sec-job", "worker-0"))
        finally:
            await ahook.close()

    asyncio.run(async_calls())

    out, err = capfd.readouterr()
    if auth == "token":
        assert len(issued) >= 2, "the expired token was never replaced"
    from airflow.sdk.log import redact

    from airflow_provider_modelarts.redaction import signed_url_secrets

    # Every signature of every link handed out must stay out of the logs.
    link_secrets = [s for url in links for s in signed_url_secrets(url)]
    assert link_secrets
    forbidden = [*creds.all(), *issued, *link_secrets]

    # The provider's own log lines and error messages: nothing, not even before Airflow's masker.
    def third_party(text: str) -> bool:
        return any(name in text for name in ("urllib3", "httpx", "httpcore"))

    own_lines = [f"{r.getMessage()} {r.exc_text or ''}" for r in caplog.records if not third_party(r.name)]
    own_lines += [line for line in (out + err).splitlines() if not third_party(line)]
    own_text = "\n".join(own_lines + messages)
    assert "archived" in own_text, "the provider's log lines were not captured"
    assert emu.counters["dropped"] > 0, "no connection was dropped"
    leaks = find_leaks(own_text, forbidden)
    assert not leaks, "\n".join(leaks)

    # Transport libraries log request lines (with the query) at DEBUG; in Airflow those lines pass through
    # the secrets masker, so every link secret must be registered with it.
    transport_text = "\n".join(r.getMessage() for r in caplog.records if third_party(r.name))
    transport_text += "\n".join(line for line in (out + err).splitlines() if third_party(line))
    masked = redact(transport_text)
    assert isinstance(masked, str)
    leaks = find_leaks(masked, forbidden)
    assert not leaks, "secrets Airflow's masker would not hide:\n" + "\n".join(leaks)
    raw_hits = find_leaks(transport_text, link_secrets)
    print(
        f"\n{auth}: {len(own_lines)} provider lines clean; {len(raw_hits)} transport-library hits masked by Airflow"
    )


# ------------------------------------------------------------------------------------------------
# TLS verification
# ------------------------------------------------------------------------------------------------


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.timezone.utc)
    import ipaddress

    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


@pytest.mark.timeout(60)
def test_tls_verified_by_default_and_verify_false_warns_once(tmp_path, monkeypatch, caplog):
    import ssl

    from airflow_provider_modelarts import connection as connection_module
    from airflow_provider_modelarts.exceptions import ModelArtsError
    from airflow_provider_modelarts.hooks import modelarts as hook_module
    from tests.reliability._servers import Answer, ScriptedServer

    cert, key = _self_signed(tmp_path)
    body = json.dumps({"metadata": {"id": "j"}, "status": {"phase": "Completed", "tasks": []}})
    server = ScriptedServer(lambda method, path: Answer(body=body))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    server._server.socket = ctx.wrap_socket(server._server.socket, server_side=True)
    pid = "0123456789abcdef0123456789abcdef"

    def conn(**extra: Any) -> str:
        return json.dumps(
            {
                "conn_type": "modelarts",
                "login": "AKAKAKAKAKAKAKAK",
                "password": "SKSKSKSKSKSKSKSKSKSK",
                "extra": {"project_id": pid, "endpoint": server.url.replace("http://", "https://"), **extra},
            }
        )

    monkeypatch.setattr(connection_module, "_verify_warned", False)
    with server:
        monkeypatch.setenv("AIRFLOW_CONN_MODELARTS_DEFAULT", conn())
        default_hook = hook_module.ModelArtsHook(
            retry_wait=tenacity.wait_none(), max_retries=0, request_timeout=5
        )
        assert default_hook.config.verify is True
        with pytest.raises(ModelArtsError) as info:
            default_hook.get_training_job("j")
        assert "ssl" in str(info.value).lower() or "certificate" in str(info.value).lower(), info.value
        assert not server.requests, "a request completed over an unverified TLS connection"

        monkeypatch.setenv("AIRFLOW_CONN_MODELARTS_DEFAULT", conn(verify=False))
        caplog.set_level(logging.WARNING)
        for _ in range(3):
            hook = hook_module.ModelArtsHook(
                retry_wait=tenacity.wait_none(), max_retries=0, request_timeout=5
            )
            assert hook.get_training_job("j")["status"]["phase"] == "Completed"
        warnings = [r for r in caplog.records if "verification is disabled" in r.getMessage()]
        assert len(warnings) == 1, [r.getMessage() for r in warnings]

        monkeypatch.setenv("AIRFLOW_CONN_MODELARTS_DEFAULT", conn(verify=str(cert)))
        hook = hook_module.ModelArtsHook(retry_wait=tenacity.wait_none(), max_retries=0, request_timeout=5)
        assert hook.get_training_job("j")["status"]["phase"] == "Completed"
