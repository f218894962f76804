"""The ModelArts + IAM + OBS emulator: one threaded HTTP/1.1 server on loopback."""

from __future__ import annotations

import base64
import contextlib
import hmac
import json
import re
import secrets
import socket
import sys
import threading
import time
import traceback
import uuid
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlencode

from airflow_provider_modelarts.emulator.live import end_reason, list_events
from airflow_provider_modelarts.emulator.logs import LogSource
from airflow_provider_modelarts.emulator.ratelimit import (
    THROTTLE_CODE,
    RateLimiter,
    credential_of,
    parse_rate_limit,
)
from airflow_provider_modelarts.emulator.scenario import (
    SECONDARY_PHASE,
    TERMINAL,
    EmulatedJob,
    EmulatedTask,
    ScenarioError,
    build_job,
    load_scenario,
)
from airflow_provider_modelarts.emulator.searches import SearchRejected, search_training_jobs, visible
from airflow_provider_modelarts.emulator.signing import (
    SignatureError,
    obs_signature,
    obs_string_to_sign,
    parse_raw_query,
    verify_sdk_hmac,
)
from airflow_provider_modelarts.emulator.smn import SmnEmulator, SmnRejection
from airflow_provider_modelarts.emulator.state import Counters, Knobs

DEFAULT_AK = "EMULATORAK0000000001"
DEFAULT_SK = "EmulatorSecretKey000000000000000000000000"
DEFAULT_PROJECT_ID = "0123456789abcdef0123456789abcdef"
DEFAULT_IAM_USER = "emulator-user"
DEFAULT_IAM_PASSWORD = "emulator-password"
DEFAULT_DOMAIN = "emulator-domain"
DEFAULT_REGION = "cn-north-4"
OBS_BUCKET = "modelarts-emulator-logs"
OBS_ACCESS_KEY = "EMULATOROBSAK0000001"
PREVIEW_LIMIT = 5 * 1024 * 1024
TOKEN_LIFETIME = timedelta(hours=24)
WRITE_CHUNK = 1024 * 1024


class _Reject(Exception):
    """An error answer decided while handling a request."""

    def __init__(self, status: int, error_code: str, error_msg: str, *, apig: bool = False) -> None:
        super().__init__(error_msg)
        self.status = status
        self.error_code = error_code
        self.error_msg = error_msg
        self.apig = apig


def _now_iso(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "000Z"


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128
    emulator: ModelArtsEmulator


class ModelArtsEmulator:
    """A local stand-in for ModelArts training-job APIs, IAM tokens and the OBS log links.

    :param scenario: the jobs to serve: a mapping, a JSON/YAML file path, or None for the default scenario.
    :param host: address to bind (loopback by default).
    :param port: port to bind; 0 picks a free port.
    :param ak: the access key accepted for ``SDK-HMAC-SHA256`` signatures.
    :param sk: its secret key.
    :param project_id: the project id served under ``/v2/{project_id}/``.
    :param link_ttl: initial lifetime in seconds of OBS links (``knobs.link_ttl``).
    :param temporary_credentials: an extra ``(ak, sk, security_token)`` triple accepted only with that
        ``X-Security-Token``.
    :param iam_user: IAM user name accepted by ``POST /v3/auth/tokens``.
    :param iam_password: its password.
    :param domain: its account (domain) name.
    :param region: region name reported in tokens and accepted as the project name in token scopes.
    :param rate_limit: the gateway's per-credential limit on ModelArts API calls, e.g. ``"20/s"`` or
        ``"600/min"`` (see :mod:`~airflow_provider_modelarts.emulator.ratelimit`); None for no limit.
    """

    def __init__(
        self,
        scenario: dict[str, Any] | str | Path | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        ak: str = DEFAULT_AK,
        sk: str = DEFAULT_SK,
        project_id: str = DEFAULT_PROJECT_ID,
        link_ttl: float = 300,
        temporary_credentials: tuple[str, str, str] | None = None,
        iam_user: str = DEFAULT_IAM_USER,
        iam_password: str = DEFAULT_IAM_PASSWORD,
        domain: str = DEFAULT_DOMAIN,
        region: str = DEFAULT_REGION,
        rate_limit: str | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.ak = ak
        self.sk = sk
        self.project_id = project_id
        self.temporary_credentials = temporary_credentials
        self.iam_user = iam_user
        self.iam_password = iam_password
        self.domain = domain
        self.region = region
        self.knobs = Knobs(link_ttl=link_ttl)
        self.rate_limiter = RateLimiter(parse_rate_limit(rate_limit)) if rate_limit else None
        self.counters = Counters()
        self.obs_access_key = OBS_ACCESS_KEY
        self._obs_secret = secrets.token_urlsafe(30)
        self._lock = threading.Lock()
        self._throttle_credit = 0.0
        self._clock_offset = 0.0
        self._tokens: dict[str, dict[str, Any]] = {}
        self._jobs: dict[str, EmulatedJob] = {}
        self.smn = SmnEmulator(project_id=project_id, region=region)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._connections: set[socket.socket] = set()
        self._scenario, self._scenario_dir = load_scenario(scenario)
        self._load_jobs(time.time())

    # ----------------------------------------------------------------- life cycle

    def _load_jobs(self, base_time: float) -> None:
        jobs: dict[str, EmulatedJob] = {}
        for index, raw in enumerate(self._scenario.get("jobs") or []):
            job = build_job(raw, base_time=base_time, index=index, base_dir=self._scenario_dir)
            if job.id in jobs:
                raise ScenarioError(f"duplicate job id {job.id!r}")
            jobs[job.id] = job
        self._jobs = jobs

    def start(self) -> str:
        """Bind, start serving in a background thread and return the base URL ``http://host:port``.

        Scenario timelines start counting now.
        """
        if self._server is not None:
            return self.url
        server = _Server((self.host, self.port), _Handler)
        server.emulator = self
        self._server = server
        self.port = server.server_address[1]
        self._load_jobs(self.now())
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="modelarts-emulator",
            daemon=True,
        )
        self._thread.start()
        return self.url

    def stop(self) -> None:
        """Stop serving and close open connections."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> ModelArtsEmulator:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """Base URL of the running emulator."""
        if self._server is None:
            raise RuntimeError("the emulator is not started")
        host = self.host if ":" not in self.host else f"[{self.host}]"
        return f"http://{host}:{self.port}"

    # ----------------------------------------------------------------- public helpers

    def now(self) -> float:
        """The emulator's clock (unix seconds): real time plus whatever :meth:`advance` added."""
        return time.time() + self._clock_offset

    def advance(self, seconds: float) -> None:
        """Move the emulator's clock forward: timelines progress, logs grow and links expire sooner.

        :param seconds: how far to move the clock.
        """
        with self._lock:
            self._clock_offset += seconds

    def reset_counters(self) -> None:
        """Set all counters to 0."""
        self.counters.reset()

    def add_job(self, job: dict[str, Any]) -> None:
        """Add a job at run time; its timeline counts from now.

        :param job: a job mapping in the scenario format.
        """
        with self._lock:
            built = build_job(job, base_time=self.now(), index=len(self._jobs), base_dir=self._scenario_dir)
            if built.id in self._jobs:
                raise ScenarioError(f"duplicate job id {built.id!r}")
            self._jobs[built.id] = built

    def job_ids(self) -> list[str]:
        """Ids of the jobs currently served."""
        return list(self._jobs)

    def job(self, job_id: str) -> EmulatedJob:
        """The emulated job with that id.

        :param job_id: the training job id.
        """
        return self._jobs[job_id]

    def _task(self, job_id: str, task_id: str) -> EmulatedTask:
        task = self._jobs[job_id].task(task_id)
        if task is None:
            raise KeyError(f"job {job_id} has no task {task_id}")
        return task

    def log_size(self, job_id: str, task_id: str) -> int:
        """Size in bytes of the task's full (final) log.

        :param job_id: the training job id.
        :param task_id: the task, e.g. ``worker-0``.
        """
        return self._task(job_id, task_id).log.size

    def log_sha256(self, job_id: str, task_id: str) -> str:
        """Hex SHA-256 of the task's full (final) log, computed once and cached.

        :param job_id: the training job id.
        :param task_id: the task, e.g. ``worker-0``.
        """
        return self._task(job_id, task_id).log.sha256()

    def log_bytes(self, job_id: str, task_id: str, start: int = 0, end: int | None = None) -> bytes:
        """Bytes of the task's final log (small ranges only).

        :param job_id: the training job id.
        :param task_id: the task.
        :param start: first offset.
        :param end: end offset (exclusive), the full size by default.
        """
        log = self._task(job_id, task_id).log
        return log.read(start, log.size if end is None else min(end, log.size))

    def connection_json(self, auth_type: str = "aksk") -> str:
        """JSON for ``AIRFLOW_CONN_MODELARTS_DEFAULT`` pointing at this emulator.

        :param auth_type: ``aksk`` (login/password = AK/SK) or ``token`` (login/password = IAM user/password).
        """
        extra: dict[str, Any] = {
            "project_id": self.project_id,
            "endpoint": self.url,
            "region": self.region,
            "smn_endpoint": self.url,
        }
        if auth_type == "aksk":
            return json.dumps(
                {"conn_type": "modelarts", "login": self.ak, "password": self.sk, "extra": extra}
            )
        if auth_type == "token":
            extra.update({"auth_type": "token", "domain_name": self.domain, "iam_endpoint": self.url})
            return json.dumps(
                {
                    "conn_type": "modelarts",
                    "login": self.iam_user,
                    "password": self.iam_password,
                    "extra": extra,
                }
            )
        raise ValueError("auth_type must be 'aksk' or 'token'")

    def connection_uri(self, auth_type: str = "aksk") -> str:
        """Airflow connection URI equivalent of :meth:`connection_json`.

        :param auth_type: ``aksk`` or ``token``.
        """
        conn = json.loads(self.connection_json(auth_type))
        login = quote(conn["login"], safe="")
        password = quote(conn["password"], safe="")
        return f"modelarts://{login}:{password}@/?__extra__={quote(json.dumps(conn['extra']), safe='')}"

    # ----------------------------------------------------------------- auth

    def _credentials_for(self, access_key: str) -> tuple[str, str | None] | None:
        if hmac.compare_digest(access_key, self.ak):
            return self.sk, None
        if self.temporary_credentials and hmac.compare_digest(access_key, self.temporary_credentials[0]):
            return self.temporary_credentials[1], self.temporary_credentials[2]
        return None

    def _authenticate(self, method: str, target: str, headers: dict[str, str], body: bytes) -> str:
        token = headers.get("x-auth-token")
        if token is not None:
            with self._lock:
                info = self._tokens.get(token)
                if info is None:
                    raise _Reject(
                        401,
                        "APIG.0301",
                        "Incorrect IAM authentication information: decrypt token fail",
                        apig=True,
                    )
                if info["expires"] <= datetime.now(timezone.utc) or self.knobs.expire_token_once:
                    self.knobs.expire_token_once = False
                    del self._tokens[token]
                    raise _Reject(
                        401,
                        "APIG.0301",
                        f"Incorrect IAM authentication information: token expires, expires_at: {_now_iso(info['expires'])}",
                        apig=True,
                    )
            if info["project_id"] is None:
                raise _Reject(401, "ModelArts.0207", "The token must contain project info.")
            return "token"
        if "authorization" not in headers:
            raise _Reject(
                401,
                "APIG.0301",
                "Incorrect IAM authentication information: x-auth-token not found",
                apig=True,
            )
        try:
            verify_sdk_hmac(method, target, headers, body, self._credentials_for)
        except SignatureError as err:
            raise _Reject(
                401, "APIG.0301", f"Incorrect IAM authentication information: {err}", apig=True
            ) from None
        return "aksk"

    def _issue_token(self, body: bytes, query: list[tuple[str, str]]) -> tuple[str, dict[str, Any]]:
        try:
            doc = json.loads(body or b"{}")
            auth = doc["auth"]
            identity = auth["identity"]
            user = identity["password"]["user"]
            methods = identity["methods"]
        except (ValueError, KeyError, TypeError):
            raise _Reject(400, "IAM.0011", "Request body is invalid.") from None
        if "password" not in methods:
            raise _Reject(400, "IAM.0011", "Only the password method is supported by the emulator.")
        user_domain = (user.get("domain") or {}).get("name")
        if not (
            hmac.compare_digest(str(user.get("name", "")), self.iam_user)
            and hmac.compare_digest(str(user.get("password", "")), self.iam_password)
            and user_domain == self.domain
        ):
            raise _Reject(401, "IAM.0004", "The username or password is wrong.")
        scope = auth.get("scope") or {}
        project_id: str | None = None
        if "project" in scope:
            project = scope["project"] or {}
            if project.get("id") not in (None, self.project_id) or project.get("name") not in (
                None,
                self.region,
            ):
                raise _Reject(401, "IAM.0002", "The project in the scope does not exist.")
            project_id = self.project_id
        issued = datetime.now(timezone.utc)
        expires = issued + TOKEN_LIFETIME
        token = "MIIEmulator" + base64.urlsafe_b64encode(secrets.token_bytes(96)).decode("ascii").rstrip("=")
        with self._lock:
            self._tokens[token] = {"expires": expires, "project_id": project_id}
        domain = {"id": "emulator-domain-id", "name": self.domain}
        result: dict[str, Any] = {
            "expires_at": _now_iso(expires),
            "issued_at": _now_iso(issued),
            "methods": ["password"],
            "roles": [{"id": "0", "name": "te_admin"}],
            "user": {
                "id": "emulator-user-id",
                "name": self.iam_user,
                "password_expires_at": "",
                "domain": domain,
            },
        }
        if project_id is not None:
            result["project"] = {"id": project_id, "name": self.region, "domain": domain}
        else:
            result["domain"] = domain
        if not any(k == "nocatalog" and v for k, v in query):
            result["catalog"] = [
                {
                    "type": "modelarts",
                    "id": "emulator-modelarts",
                    "name": "modelarts",
                    "endpoints": [
                        {
                            "url": self.url,
                            "region": self.region,
                            "region_id": self.region,
                            "interface": "public",
                            "id": "emulator-endpoint",
                        }
                    ],
                }
            ]
        return token, {"token": result}

    # ----------------------------------------------------------------- API fault knobs

    def _api_faults(self) -> tuple[int, str, str, bool] | None:
        with self._lock:
            ratio = min(max(self.knobs.throttle_ratio, 0.0), 1.0)
            if ratio > 0:
                self._throttle_credit += ratio
                if self._throttle_credit >= 1.0 - 1e-9:
                    self._throttle_credit -= 1.0
                    self.counters.add("throttled")
                    return (
                        429,
                        "APIG.0308",
                        "The throttling threshold has been reached: policy user over ratelimit,limit:100,time:1 minute",
                        True,
                    )
            if self.knobs.error_burst > 0:
                self.knobs.error_burst -= 1
                self.counters.add("server_error")
                status = self.knobs.error_status
                if status == 500:
                    return 500, "ModelArts.0010", "Internal error.", False
                return status, "APIG.0203", "Backend timeout", True
        return None

    # ----------------------------------------------------------------- job bodies

    def _job_body(self, job: EmulatedJob, now: float) -> dict[str, Any]:
        entry = job.entry_at(now)
        phase = entry.phase
        start = job.running_start()
        started = start is not None and now >= start
        terminal = phase in TERMINAL
        end = job.terminal_time() if terminal else None
        duration_ms = 0
        if started and start is not None:
            duration_ms = int(((end if end is not None else now) - start) * 1000)
            duration_ms = max(duration_ms, 0)
        if terminal:
            task_statuses = [
                {
                    "task": t.id,
                    "exit_code": t.exit_code if t.exit_code is not None else 0,
                    "message": t.message,
                }
                for t in job.tasks
            ]
        elif started:
            task_statuses = [{"task": t.id, "message": ""} for t in job.tasks]
        else:
            task_statuses = []
        metrics = [[job.create_time_ms, 0]]
        if started and start is not None:
            metrics.append([int(start * 1000), job.node_count])
        status: dict[str, Any] = {
            "phase": phase,
            "secondary_phase": entry.secondary_phase or SECONDARY_PHASE[phase],
            "duration": duration_ms,
            "start_time": int(start * 1000) if started and start is not None else 0,
            "node_count_metrics": metrics,
            "tasks": [t.id for t in job.tasks],
            "task_statuses": task_statuses,
        }
        if started and start is not None:
            record: dict[str, Any] = {"start_at": int(start), "start_type": "init_or_rescheduled"}
            if end is not None:
                record.update({"end_at": int(end), "end_reason": end_reason(job, phase)})
            status["running_records"] = [record]
        algorithm = {
            "id": f"algo-{job.id}",
            "name": f"{job.name}-algorithm",
            "code_dir": "obs://modelarts-emulator/code/",
            "boot_file": "obs://modelarts-emulator/code/train.py",
            "engine": {
                "engine_id": "pytorch_1.8.0-cuda_10.2-py_3.7-ubuntu_18.04-x86_64",
                "engine_name": "PyTorch",
                "engine_version": "pytorch_1.8.0-cuda_10.2-py_3.7-ubuntu_18.04-x86_64",
            },
        }
        algorithm.update(job.algorithm)
        spec: dict[str, Any] = {
            "resource": {
                "flavor_id": "modelarts.vm.cpu.8u",
                "flavor_name": "CPU: 8vCPUs 32GB",
                "node_count": job.node_count,
            },
            "log_export_path": {},
            "is_hosted_log": True,
        }
        for key, value in job.spec.items():
            if key == "resource" and isinstance(value, dict):
                spec["resource"].update(value)
            else:
                spec[key] = value
        return {
            "kind": job.kind,
            "metadata": {
                "id": job.id,
                "name": job.name,
                "workspace_id": "0",
                "description": job.description,
                "create_time": job.create_time_ms,
                "user_name": job.user_name,
                "annotations": {"job_template": "Template DL"},
            },
            "status": status,
            "algorithm": algorithm,
            "spec": spec,
        }

    def _get_job(self, job_id: str) -> EmulatedJob:
        job = self._jobs.get(job_id)
        if job is None or not visible(job, self.now()):
            raise _Reject(404, "ModelArts.2775", f"Training job (ID: {job_id}) not found.")
        return job

    def _get_task(self, job: EmulatedJob, task_id: str) -> EmulatedTask:
        task = job.task(task_id)
        if task is None:
            raise _Reject(
                400,
                "ModelArts.2788",
                f"InvalidParam(task_id): task {task_id} is not in training job {job.id}.",
            )
        return task

    # ----------------------------------------------------------------- API handlers

    def _search(self, body: bytes) -> dict[str, Any]:
        try:
            return search_training_jobs(
                body, list(self._jobs.values()), now=self.now(), job_body=self._job_body
            )
        except SearchRejected as err:
            raise _Reject(err.status, err.error_code, err.error_msg) from None

    def _log_url(
        self, job: EmulatedJob, task: EmulatedTask, headers: dict[str, str], query: list[tuple[str, str]]
    ) -> dict[str, str]:
        kinds = ("text/plain", "application/octet-stream")
        header_type = headers.get("content-type", "").split(";")[0].strip().lower()
        query_type = next((v for k, v in query if k == "Content-Type"), None)
        if header_type in kinds:
            content_type = header_type
        elif query_type is not None:
            content_type = query_type.split(";")[0].strip().lower()
            if content_type not in kinds:
                raise _Reject(
                    400,
                    "ModelArts.0101",
                    "Invalid Argument: Content-Type must be text/plain or application/octet-stream",
                )
        else:
            content_type = "text/plain"
        return {
            "obs_url": self.sign_log_url(job.id, task.id, download=content_type == "application/octet-stream")
        }

    def sign_log_url(
        self, job_id: str, task_id: str, *, download: bool = False, ttl: float | None = None
    ) -> str:
        """A signed OBS link to a task log, as ``/logs/url`` returns it.

        :param job_id: the training job id.
        :param task_id: the task.
        :param download: a download link (``Content-Disposition: attachment``) instead of a preview link.
        :param ttl: lifetime in seconds; ``knobs.link_ttl`` by default.
        """
        path = self._obs_path(job_id, task_id)
        expires = int(self.now() + (self.knobs.link_ttl if ttl is None else ttl))
        sub_resources: list[tuple[str, str]] = []
        if download:
            sub_resources.append(
                (
                    "response-content-disposition",
                    f'attachment; filename="modelarts-job-{job_id}-{task_id}.log"',
                )
            )
        signature = obs_signature(
            self._obs_secret, obs_string_to_sign("GET", expires, self._obs_resource(path, sub_resources))
        )
        params = [
            ("AccessKeyId", self.obs_access_key),
            ("Expires", str(expires)),
            ("Signature", signature),
            *sub_resources,
        ]
        return f"{self.url}{path}?{urlencode(params, quote_via=quote, safe='')}"

    @staticmethod
    def _obs_path(job_id: str, task_id: str) -> str:
        jid = quote(job_id, safe="")
        return f"/{OBS_BUCKET}/{jid}/{quote(f'modelarts-job-{job_id}-{task_id}.log', safe='')}"

    @staticmethod
    def _obs_resource(path: str, sub_resources: list[tuple[str, str]]) -> str:
        subs = sorted((k, v) for k, v in sub_resources if k.startswith("response-"))
        if not subs:
            return path
        return path + "?" + "&".join(f"{k}={v}" for k, v in subs)

    def _preview(self, job: EmulatedJob, task: EmulatedTask) -> dict[str, Any]:
        size = job.log_size_at(task, self.now())
        start = max(0, size - PREVIEW_LIMIT)
        data = task.log.read(start, size)
        return {
            "content": data.decode("utf-8", errors="replace"),
            "current_size": len(data),
            "full_size": size,
        }

    def _action(self, job: EmulatedJob, body: bytes) -> dict[str, Any]:
        try:
            doc = json.loads(body or b"{}")
        except ValueError:
            raise _Reject(400, "ModelArts.2787", "InvalidJsonBody") from None
        if not isinstance(doc, dict) or doc.get("action_type") != "terminate":
            raise _Reject(400, "ModelArts.2788", "InvalidParam(action_type): only terminate is supported")
        with job.lock:
            now = self.now()
            if job.phase_at(now) in TERMINAL:
                raise _Reject(
                    409,
                    "ModelArts.2796",
                    f"NotAllowedToTerminate: training job {job.id} is already {job.phase_at(now)}.",
                )
            job.terminate(now)
        return self._job_body(job, self.now())

    # ----------------------------------------------------------------- dispatch

    def handle(self, handler: _Handler, method: str) -> None:
        target = handler.path
        raw_path, _, raw_query = target.partition("?")
        headers = {k.lower(): v for k, v in reversed(handler.headers.items())}
        body = handler.read_body()
        query = parse_raw_query(raw_query)
        segments = [unquote(s) for s in raw_path.split("/")[1:]]
        try:
            if segments and segments[0] == OBS_BUCKET and method in ("GET", "HEAD"):
                self.counters.add("obs_get")
                self._serve_obs(
                    handler, method=method, raw_path=raw_path, query=query, segments=segments, headers=headers
                )
                return
            if segments[:3] == ["v3", "auth", "tokens"] and method == "POST":
                self.counters.add("iam_token")
                token, doc = self._issue_token(body, query)
                handler.send_json(201, doc, {"X-Subject-Token": token})
                return
            smn = self.smn.route(method, segments)
            if smn is not None:
                self._handle_smn(handler, smn, method=method, target=target, headers=headers, body=body)
                return
            if len(segments) >= 3 and segments[0] == "v2":
                self._handle_api(
                    handler,
                    method=method,
                    target=target,
                    segments=segments,
                    headers=headers,
                    body=body,
                    query=query,
                )
                return
            self.counters.add("not_found")
            raise _Reject(
                404,
                "APIG.0101",
                "The API does not exist or has not been published in the environment",
                apig=True,
            )
        except _Reject as rej:
            handler.send_error_json(rej.status, rej.error_code, rej.error_msg, apig=rej.apig)

    def _route(self, method: str, rest: list[str]) -> str | None:
        if rest == ["training-job-searches"] and method == "POST":
            return "search"
        if len(rest) < 2 or rest[0] != "training-jobs":
            return None
        tail = rest[2:]
        if not tail and method in ("GET", "DELETE"):
            return "job"
        if tail == ["tasks"] and method == "GET":
            return "tasks"
        if tail == ["actions"] and method == "POST":
            return "actions"
        if tail == ["events"] and method == "GET":
            return "events"
        if len(tail) == 4 and tail[0] == "tasks" and tail[2] == "logs" and method == "GET":
            return {"url": "log_url", "preview": "preview"}.get(tail[3])
        return None

    def _handle_api(
        self,
        handler: _Handler,
        *,
        method: str,
        target: str,
        segments: list[str],
        headers: dict[str, str],
        body: bytes,
        query: list[tuple[str, str]],
    ) -> None:
        project_id, rest = segments[1], segments[2:]
        kind = self._route(method, rest)
        if kind is None:
            self.counters.add("not_found")
            raise _Reject(
                404,
                "APIG.0101",
                "The API does not exist or has not been published in the environment",
                apig=True,
            )
        self.counters.add(kind)
        if project_id != self.project_id:
            self.counters.add("outside_project")
        if self.knobs.latency > 0:
            time.sleep(self.knobs.latency)
        try:
            self._authenticate(method, target, headers, body)
        except _Reject:
            self.counters.add("rejected_auth")
            raise
        limiter = self.rate_limiter
        if limiter is not None and not limiter.allow(credential_of(headers, token_user=self.iam_user)):
            self.counters.add("throttled")
            handler.send_error_json(429, THROTTLE_CODE, limiter.limit.message(), apig=True)
            return
        fault = self._api_faults()
        if fault is not None:
            status, code, msg, apig = fault
            extra = {}
            if status == 429 and self.knobs.retry_after is not None:
                extra["Retry-After"] = f"{self.knobs.retry_after:g}"
            handler.send_error_json(status, code, msg, apig=apig, extra_headers=extra)
            return
        if project_id != self.project_id:
            raise _Reject(
                403, "ModelArts.0210", "The project id in the request URL does not match the token."
            )
        if kind == "search":
            handler.send_json(200, self._search(body))
            return
        job = self._get_job(rest[1])
        if kind == "job":
            if method == "DELETE":
                with self._lock:
                    self._jobs.pop(job.id, None)
                handler.send_json(202, {})
            else:
                handler.send_json(200, self._job_body(job, self.now()))
        elif kind == "tasks":
            handler.send_json(
                200,
                [{"task": t.id, "ip": t.ip, "host_ip": "10.0.0.1", "schedule_count": 1} for t in job.tasks],
            )
        elif kind == "actions":
            handler.send_json(200, self._action(job, body))
        elif kind == "events":
            try:
                handler.send_json(200, list_events(job, self.now(), query))
            except ValueError as err:
                raise _Reject(400, "ModelArts.2788", str(err)) from None
        elif kind == "log_url":
            if self.knobs.refuse_log_url:
                raise _Reject(
                    403,
                    "ModelArts.0108",
                    "You are not authorized to perform the (modelarts:trainJob:logExport) operation.",
                )
            handler.send_json(200, self._log_url(job, self._get_task(job, rest[3]), headers, query))
        elif kind == "preview":
            handler.send_json(200, self._preview(job, self._get_task(job, rest[3])))

    def _handle_smn(
        self, handler: _Handler, kind: str, *, method: str, target: str, headers: dict[str, str], body: bytes
    ) -> None:
        """SMN publish (signed like the ModelArts API) and the unauthenticated message list."""
        self.counters.add(f"smn_{kind}")
        if kind != "publish":
            if kind == "clear":
                self.smn.clear()
            handler.send_json(200, {"messages": self.smn.messages()})
            return
        if self.knobs.latency > 0:
            time.sleep(self.knobs.latency)
        try:
            self._authenticate(method, target, headers, body)
        except _Reject:
            self.counters.add("rejected_auth")
            raise
        fault = self._api_faults()
        if fault is not None:
            handler.send_error_json(fault[0], fault[1], fault[2], apig=fault[3])
            return
        segments = [unquote(s) for s in target.partition("?")[0].split("/")[1:]]
        try:
            answer = self.smn.publish(
                project_id=segments[1], topic_urn=segments[4], body=body, request_id=handler.request_id
            )
        except SmnRejection as rej:
            doc = {"request_id": handler.request_id, "code": rej.code, "message": rej.message}
            handler.send_json(rej.status, doc)
            return
        handler.send_json(200, answer)

    # ----------------------------------------------------------------- OBS

    def _serve_obs(
        self,
        handler: _Handler,
        *,
        method: str,
        raw_path: str,
        query: list[tuple[str, str]],
        segments: list[str],
        headers: dict[str, str],
    ) -> None:
        params = dict(query)
        access_key = params.get("AccessKeyId") or params.get("AWSAccessKeyId")
        expires = params.get("Expires", "")
        signature = params.get("Signature", "")
        sub_resources = [(k, v) for k, v in query if k.startswith("response-")]
        resource = self._obs_resource(raw_path, sub_resources)
        expected = obs_signature(
            self._obs_secret, obs_string_to_sign(method if method != "HEAD" else "GET", expires, resource)
        )
        if not (
            access_key == self.obs_access_key
            and expires.isdigit()
            and hmac.compare_digest(expected.encode(), signature.encode())
        ):
            self.counters.add("rejected_auth")
            handler.send_obs_error(
                403,
                "SignatureDoesNotMatch",
                "The request signature we calculated does not match the signature you provided.",
            )
            return
        if self.now() >= int(expires):
            handler.send_obs_error(403, "RequestTimeTooSkewed", "Request has expired.")
            return
        location = self._obs_location(segments)
        if location is None:
            handler.send_obs_error(404, "NoSuchKey", "The specified key does not exist.")
            return
        job, task = location
        size = job.log_size_at(task, self.now())
        status, start, end = 200, 0, size
        range_header = headers.get("range")
        if range_header and not self.knobs.ignore_range:
            parsed = _parse_range(range_header, size)
            if parsed == "unsatisfiable":
                handler.send_obs_error(
                    416,
                    "InvalidRange",
                    "The requested range cannot be satisfied.",
                    {"Content-Range": f"bytes */{size}"},
                )
                return
            if isinstance(parsed, tuple):
                status, (start, end) = 206, parsed
        download = any(k == "response-content-disposition" for k, _ in sub_resources)
        reply_headers = {
            "Content-Type": "application/octet-stream" if download else "text/plain; charset=utf-8",
            "Content-Length": str(end - start),
            "Accept-Ranges": "bytes",
            "ETag": f'"{job.id}-{task.id}-{size}"',
            "x-obs-request-id": handler.request_id,
        }
        if download:
            reply_headers["Content-Disposition"] = dict(sub_resources)["response-content-disposition"]
        if status == 206:
            reply_headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
        handler.send_response(status)
        for name, value in reply_headers.items():
            handler.send_header(name, value)
        handler.end_headers()
        if method == "HEAD":
            return
        limit: int | None = None
        with self._lock:
            cut = self.knobs.drop_after_bytes
            # Only a download that is longer than the cut uses up a drop, so each counted drop is real.
            if cut is not None and self.knobs.drop_downloads > 0 and max(0, int(cut)) < end - start:
                self.knobs.drop_downloads -= 1
                limit = max(0, int(cut))
                self.counters.add("dropped")
        handler.stream(task.log, start, end, limit)

    def _obs_location(self, segments: list[str]) -> tuple[EmulatedJob, EmulatedTask] | None:
        if len(segments) != 3:
            return None
        job = self._jobs.get(segments[1])
        prefix = f"modelarts-job-{segments[1]}-"
        if job is None or not segments[2].startswith(prefix) or not segments[2].endswith(".log"):
            return None
        task = job.task(segments[2][len(prefix) : -len(".log")])
        if task is None:
            return None
        return job, task


def _parse_range(value: str, size: int) -> tuple[int, int] | str | None:
    """Parse a single ``bytes=`` range; None means "ignore it and send everything"."""
    match = re.fullmatch(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*", value)
    if not match or (not match.group(1) and not match.group(2)):
        return None
    first, last = match.group(1), match.group(2)
    if not first:
        length = int(last)
        if length == 0:
            return "unsatisfiable"
        return max(0, size - length), size
    start = int(first)
    end = size if not last else min(size, int(last) + 1)
    if last and int(last) < start:
        return None
    if start >= size:
        return "unsatisfiable"
    return start, end


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "modelarts-emulator"
    sys_version = ""
    server: _Server
    request_id: str = ""
    responded: bool = False

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self.server.emulator._lock:
            self.server.emulator._connections.add(self.connection)

    def finish(self) -> None:
        with self.server.emulator._lock:
            self.server.emulator._connections.discard(self.connection)
        with contextlib.suppress(OSError):
            super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        # Request lines carry signed-URL signatures; stay quiet.
        return

    def parse_request(self) -> bool:
        self.request_id = uuid.uuid4().hex
        self.responded = False
        return super().parse_request()

    def _dispatch(self) -> None:
        try:
            self.server.emulator.handle(self, self.command)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as err:
            # A complete error answer keeps the connection usable; a half-sent one cannot be repaired.
            traceback.print_exc(file=sys.stderr)
            if self.responded:
                self.close_connection = True
            else:
                self.send_error_json(
                    500, "ModelArts.0010", f"Internal error in the emulator: {type(err).__name__}"
                )

    do_GET = _dispatch
    do_POST = _dispatch
    do_PUT = _dispatch
    do_DELETE = _dispatch
    do_HEAD = _dispatch
    do_PATCH = _dispatch

    def read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            parts = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                parts.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(parts)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def send_response(self, code: int, message: str | None = None) -> None:
        if not getattr(self, "request_id", None):
            self.request_id = uuid.uuid4().hex
        self.responded = True
        super().send_response(code, message)
        self.send_header("X-Request-Id", self.request_id)

    def send_json(self, status: int, doc: Any, extra_headers: dict[str, str] | None = None) -> None:
        data = json.dumps(doc).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (extra_headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def send_error_json(
        self,
        status: int,
        error_code: str,
        error_msg: str,
        *,
        apig: bool = False,
        extra_headers: dict[str, str] | None = None,
    ) -> None:
        doc: dict[str, Any] = {"error_code": error_code, "error_msg": error_msg}
        if apig:
            doc["request_id"] = self.request_id
        self.send_json(status, doc, extra_headers)

    def send_obs_error(
        self, status: int, code: str, message: str, extra_headers: dict[str, str] | None = None
    ) -> None:
        data = (
            '<?xml version="1.0" encoding="UTF-8"?>\n<Error>'
            f"<Code>{code}</Code><Message>{message}</Message>"
            f"<RequestId>{self.request_id}</RequestId><HostId>modelarts-emulator</HostId></Error>"
        ).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("x-obs-request-id", self.request_id)
        for name, value in (extra_headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def stream(self, log: LogSource, start: int, end: int, limit: int | None) -> None:
        """Send bytes ``[start, end)`` of a log straight to the socket, stopping after ``limit`` bytes.

        ``bytes_served`` grows before each write, so a client that has read the bytes sees them counted.
        """
        sock = self.connection
        counters = self.server.emulator.counters
        sent = 0
        pending: list[bytes | memoryview] = []
        pending_size = 0
        for chunk in log.iter_range(start, end):
            if limit is not None and sent + pending_size + len(chunk) > limit:
                cut = chunk[: limit - sent - pending_size]
                pending.append(cut)
                pending_size += len(cut)
                break
            pending.append(chunk)
            pending_size += len(chunk)
            if pending_size >= WRITE_CHUNK:
                counters.add("bytes_served", pending_size)
                sent += _send_all(sock, pending)
                pending, pending_size = [], 0
        if pending:
            counters.add("bytes_served", pending_size)
            sent += _send_all(sock, pending)
        if limit is not None and sent < end - start:
            self.close_connection = True
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


def _send_all(sock: socket.socket, buffers: list[bytes | memoryview]) -> int:
    """Write all buffers with as few system calls as possible (scatter-gather ``sendmsg``)."""
    total = sum(len(b) for b in buffers)
    views = [memoryview(b) for b in buffers if len(b)]
    while views:
        sent = sock.sendmsg(views)
        while views and sent >= len(views[0]):
            sent -= len(views[0])
            views.pop(0)
        if sent and views:
            views[0] = views[0][sent:]
    return total
