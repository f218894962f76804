"""The ModelArts + IAM + OBS emulator: one threaded HTTP/1.1 server on loopback.

:class:`ModelArtsEmulator` wires the parts together: :mod:`.http` (server and handler), :mod:`.iam`
(signatures and tokens), :mod:`.api` (ModelArts and SMN routes), :mod:`.obs` (log links) and
:mod:`.jobs` (the served jobs).
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

from airflow_provider_modelarts.emulator.api import ApiRequest, ModelArtsApi, no_such_api
from airflow_provider_modelarts.emulator.http import EmulatorHandler, EmulatorServer, Reject
from airflow_provider_modelarts.emulator.iam import Identity, IdentityService
from airflow_provider_modelarts.emulator.jobs import JobTable
from airflow_provider_modelarts.emulator.obs import OBS_BUCKET, ObsLinks, ObsRequest
from airflow_provider_modelarts.emulator.ratelimit import RateLimiter, parse_rate_limit
from airflow_provider_modelarts.emulator.scenario import EmulatedJob, EmulatedTask, load_scenario
from airflow_provider_modelarts.emulator.signing import parse_raw_query
from airflow_provider_modelarts.emulator.smn import SmnEmulator
from airflow_provider_modelarts.emulator.state import Counters, EmulatorContext, Knobs

__all__ = [
    "DEFAULT_AK",
    "DEFAULT_DOMAIN",
    "DEFAULT_IAM_PASSWORD",
    "DEFAULT_IAM_USER",
    "DEFAULT_PROJECT_ID",
    "DEFAULT_REGION",
    "DEFAULT_SK",
    "ModelArtsEmulator",
]

DEFAULT_AK = "EMULATORAK0000000001"
DEFAULT_SK = "EmulatorSecretKey000000000000000000000000"
DEFAULT_PROJECT_ID = "0123456789abcdef0123456789abcdef"
DEFAULT_IAM_USER = "emulator-user"
DEFAULT_IAM_PASSWORD = "emulator-password"
DEFAULT_DOMAIN = "emulator-domain"
DEFAULT_REGION = "cn-north-4"


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
        self.smn = SmnEmulator(project_id=project_id, region=region)
        self._lock = threading.Lock()
        self._clock_offset = 0.0
        self._server: EmulatorServer | None = None
        self._thread: threading.Thread | None = None
        raw, base_dir = load_scenario(scenario)
        self._jobs = JobTable(list(raw.get("jobs") or []), base_dir=base_dir)
        self._jobs.load(time.time())
        identity = Identity(ak, sk, temporary_credentials, iam_user, iam_password, domain, project_id, region)
        self._identity = IdentityService(identity, knobs=self.knobs, base_url=lambda: self.url)
        context = EmulatorContext(
            jobs=self._jobs,
            knobs=self.knobs,
            counters=self.counters,
            clock=self.now,
            base_url=lambda: self.url,
        )
        self._obs = ObsLinks(context)
        self.obs_access_key = self._obs.access_key
        self._api = ModelArtsApi(
            context, identity=self._identity, obs=self._obs, smn=self.smn, rate_limiter=self.rate_limiter
        )

    # ----------------------------------------------------------------- life cycle

    def start(self) -> str:
        """Bind, start serving in a background thread and return the base URL ``http://host:port``.

        Scenario timelines start counting now.
        """
        if self._server is not None:
            return self.url
        server = EmulatorServer((self.host, self.port), self)
        self._server = server
        self.port = server.server_address[1]
        self._jobs.load(self.now())
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
        server.cut_connections()
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
        self._jobs.add(job, base_time=self.now())

    def job_ids(self) -> list[str]:
        """Ids of the jobs currently served."""
        return self._jobs.ids()

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
            login, password = self.ak, self.sk
        elif auth_type == "token":
            login, password = self.iam_user, self.iam_password
            extra.update({"auth_type": "token", "domain_name": self.domain, "iam_endpoint": self.url})
        else:
            raise ValueError("auth_type must be 'aksk' or 'token'")
        return json.dumps({"conn_type": "modelarts", "login": login, "password": password, "extra": extra})

    def connection_uri(self, auth_type: str = "aksk") -> str:
        """Airflow connection URI equivalent of :meth:`connection_json`.

        :param auth_type: ``aksk`` or ``token``.
        """
        conn = json.loads(self.connection_json(auth_type))
        login = quote(conn["login"], safe="")
        password = quote(conn["password"], safe="")
        return f"modelarts://{login}:{password}@/?__extra__={quote(json.dumps(conn['extra']), safe='')}"

    def sign_log_url(
        self, job_id: str, task_id: str, *, download: bool = False, ttl: float | None = None
    ) -> str:
        """A signed OBS link to a task log, as ``/logs/url`` returns it.

        :param job_id: the training job id.
        :param task_id: the task.
        :param download: a download link (``Content-Disposition: attachment``) instead of a preview link.
        :param ttl: lifetime in seconds; ``knobs.link_ttl`` by default.
        """
        return self._obs.sign(job_id, task_id, download=download, ttl=ttl)

    # ----------------------------------------------------------------- dispatch

    def _issue_token(self, body: bytes, query: list[tuple[str, str]]) -> tuple[str, dict[str, Any]]:
        return self._identity.issue_token(body, query)

    def handle(self, handler: EmulatorHandler, method: str) -> None:
        """Answer one request: OBS objects, IAM tokens, SMN or the ModelArts API.

        :param handler: the request's handler.
        :param method: the HTTP method.
        """
        target = handler.path
        raw_path, _, raw_query = target.partition("?")
        headers = {k.lower(): v for k, v in reversed(handler.headers.items())}
        body = handler.read_body()
        query = parse_raw_query(raw_query)
        segments = [unquote(s) for s in raw_path.split("/")[1:]]
        request = ApiRequest(method, target, segments, headers, body, query)
        try:
            self._route(handler, request, raw_path)
        except Reject as rej:
            handler.send_error_json(rej.status, rej.error_code, rej.error_msg, apig=rej.apig)

    def _route(self, handler: EmulatorHandler, request: ApiRequest, raw_path: str) -> None:
        method, segments = request.method, request.segments
        if segments and segments[0] == OBS_BUCKET and method in ("GET", "HEAD"):
            self.counters.add("obs_get")
            obs_request = ObsRequest(
                method=method,
                raw_path=raw_path,
                query=request.query,
                segments=segments,
                headers=request.headers,
            )
            self._obs.serve(handler, obs_request)
        elif segments[:3] == ["v3", "auth", "tokens"] and method == "POST":
            self.counters.add("iam_token")
            token, doc = self._issue_token(request.body, request.query)
            handler.send_json(201, doc, {"X-Subject-Token": token})
        elif (smn := self.smn.route(method, segments)) is not None:
            self._api.handle_smn(handler, smn, request)
        elif len(segments) >= 3 and segments[0] == "v2":
            self._api.handle(handler, request)
        else:
            self.counters.add("not_found")
            raise no_such_api()
