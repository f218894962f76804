"""The ModelArts hook: every API call of the provider, over ``requests``.

The endpoints are data (:data:`~airflow_provider_modelarts.hooks.calls.ENDPOINTS`); each API method
builds a call (:mod:`~airflow_provider_modelarts.hooks.calls`), sends it through the one choke point
:meth:`ModelArtsHook._send` (signing or IAM token, timeout, rate limit, retries, typed errors) and checks
the answer (:mod:`~airflow_provider_modelarts.hooks.answers`). The connection is parsed in
:mod:`~airflow_provider_modelarts.connection`; the non-blocking twin is
:class:`~airflow_provider_modelarts.hooks.modelarts_async.ModelArtsAsyncHook`.
"""

from __future__ import annotations

from datetime import datetime
from functools import cached_property
from typing import Any

import requests
import tenacity

from airflow_provider_modelarts.auth import IamToken, IamTokenAuth
from airflow_provider_modelarts.connection import (
    ModelArtsConnectionConfig,
    parse_connection,
    read_connection,
    warn_verify_disabled,
)
from airflow_provider_modelarts.exceptions import (
    ModelArtsApiError,
    ModelArtsResponseError,
    ModelArtsTransportError,
)
from airflow_provider_modelarts.hooks.answers import (
    DEFAULT_LOG_LINK_TTL,
    content_range,
    event_list,
    expect_dict,
    job_matches,
    json_answer,
    log_url_expires_at,
    log_url_from,
    parse_token,
    preview_from,
    range_total,
    task_list,
    whole_object_ends_by,
)
from airflow_provider_modelarts.hooks.calls import (
    USER_AGENT,
    ApiCall,
    api_call,
    authorize,
    check_link_host,
    console_url,
    events_call,
    log_url_call,
    needs_token,
    obs_call,
    range_call,
    rate_limiter,
    search_body,
    service_call,
    token_call,
    validate_list_args,
)
from airflow_provider_modelarts.hooks.common import ERROR_BODY_LIMIT, ModelArtsHookBase, raise_for_answer
from airflow_provider_modelarts.hooks.modelarts_async import ModelArtsAsyncHook

# Besides the hooks: names moved to other modules that other parts of the package still import from here.
__all__ = [
    "TEST_CONNECTION_TIMEOUT",
    "ModelArtsAsyncHook",
    "ModelArtsHook",
    "log_url_expires_at",
]

TEST_CONNECTION_TIMEOUT = 5.0
"""Longest per-request timeout (seconds) of :meth:`ModelArtsHook.test_connection`, which never retries."""
_MAX_LIST_PAGES = 10_000


def _error_body(response: requests.Response, stream: bool) -> bytes:
    """The start of an error answer's body (b"" if it cannot be read); closes the response."""
    try:
        raw = response.raw.read(ERROR_BODY_LIMIT, decode_content=True) if stream else response.content
    except Exception:
        raw = b""
    finally:
        response.close()
    return raw or b""


class ModelArtsHook(ModelArtsHookBase):
    """Talk to Huawei Cloud ModelArts (and fetch OBS log links) over HTTP with ``requests``.

    Every call goes through :meth:`_send`: it signs (AK/SK) or adds the IAM token, applies the timeout,
    retries connection errors, timeouts, 5xx and 429 with exponential backoff and jitter (honouring
    ``Retry-After``), and raises :class:`ModelArtsApiError` subclasses for error answers.

    :param modelarts_conn_id: the ``modelarts`` connection id.
    :param retry_wait: a tenacity wait strategy replacing the default backoff (which also honours
        ``Retry-After``); e.g. ``tenacity.wait_none()`` in tests.
    :param max_retries: retries after the first attempt; default from the connection (5).
    :param request_timeout: per-request timeout in seconds; default from the connection's extra
        ``request_timeout`` (30).
    :param mask_log_links: register the signature of each log link :meth:`get_task_log_url` returns with
        Airflow's secret masker (default). ``False`` is for callers that never log a link, put it in an
        error message or push it to XCom (the archive workers): the masker grows with every secret, so
        each registration costs more than the one before.
    """

    hook_name = "Huawei Cloud ModelArts"

    def __init__(
        self,
        modelarts_conn_id: str = ModelArtsHookBase.default_conn_name,
        *,
        retry_wait: tenacity.wait.wait_base | None = None,
        max_retries: int | None = None,
        request_timeout: float | None = None,
        mask_log_links: bool = True,
    ) -> None:
        super().__init__(
            modelarts_conn_id,
            retry_wait=retry_wait,
            max_retries=max_retries,
            request_timeout=request_timeout,
        )
        self.mask_log_links = mask_log_links

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        """Connection form behaviour for Airflow versions that do not read ``conn-fields``."""
        from airflow_provider_modelarts import get_provider_info

        return get_provider_info()["connection-types"][0]["ui-field-behaviour"]

    @cached_property
    def config(self) -> ModelArtsConnectionConfig:
        """The parsed and validated connection."""
        conn = read_connection(self.get_connection, self.modelarts_conn_id)
        config = parse_connection(conn, self.modelarts_conn_id)
        if config.verify is False:
            warn_verify_disabled()
        return config

    @cached_property
    def session(self) -> requests.Session:
        """The ``requests`` session every call uses."""
        session = requests.Session()
        session.headers["User-Agent"] = USER_AGENT
        return session

    @cached_property
    def token_auth(self) -> IamTokenAuth:
        """Adds the IAM token (token auth) and renews it once when ModelArts refuses it."""
        config = self.config

        def fetch() -> IamToken:
            response = self._send(token_call(config))
            return parse_token(response.status_code, response.headers, response.content)

        return IamTokenAuth(config.token_key, fetch=fetch)

    # -- transport: the one choke point -----------------------------------------------------------

    def _send(
        self,
        call: ApiCall,
        *,
        stream: bool = False,
        timeout: float | None = None,
        session: requests.Session | None = None,
    ) -> requests.Response:
        """Send ``call`` with retries; return a 2xx response or raise a :class:`ModelArtsApiError`.

        Redirects are never followed (a 3xx is an error answer, not retried).
        """
        config = self.config
        request_timeout = self.options.timeout_for(config, timeout)
        http = session or self.session
        limiter = rate_limiter(config, call)
        auth = self.token_auth if needs_token(config, call) else None

        def attempt() -> requests.Response:
            if limiter is not None:
                limiter.acquire()
            url, headers, body = authorize(config, call)
            if auth is not None:
                auth.token()  # a failing IAM call fails here, before any ModelArts request is made
            failure: ModelArtsTransportError | None = None
            try:
                response = http.request(
                    call.method,
                    url,
                    headers=headers,
                    data=body,
                    auth=auth,
                    stream=stream,
                    timeout=request_timeout,
                    verify=config.verify,
                    allow_redirects=False,
                )
            except requests.RequestException as err:
                if call.error_kind != "obs":
                    raise call.no_answer(err) from err
                failure = call.no_answer(err)
            if failure is not None:  # raised outside the handler: the cause holds the signed link
                raise failure
            if limiter is not None:
                limiter.record(response.status_code)
            raise_for_answer(
                call, response.status_code, response.headers, lambda: _error_body(response, stream)
            )
            return response

        return tenacity.Retrying(**self.options.retrying(config))(attempt)

    def _api_json(self, call: ApiCall) -> tuple[Any, requests.Response]:
        """Send an authenticated call and parse its JSON answer."""
        response = self._send(call)
        return json_answer(call, response.status_code, response.headers, response.content), response

    # -- API --------------------------------------------------------------------------------------

    def get_training_job(self, training_job_id: str) -> dict:
        """Details of a training job (``GET /v2/{project_id}/training-jobs/{training_job_id}``).

        :param training_job_id: the job id.
        """
        call = api_call(self.config, "get_training_job", training_job_id=training_job_id)
        payload, response = self._api_json(call)
        return expect_dict(call, payload, response.status_code)

    def list_training_jobs(
        self,
        *,
        phases: list[str] | None = None,
        created_after_ms: int | None = None,
        created_before_ms: int | None = None,
        page_size: int = 50,
    ) -> list[dict]:
        """All training jobs matching the filters, newest first, paging through ``training-job-searches``.

        :param phases: keep jobs in these ``status.phase`` values.
        :param created_after_ms: keep jobs created at or after this epoch time (ms).
        :param created_before_ms: keep jobs created at or before this epoch time (ms).
        :param page_size: jobs per page (1-50).
        """
        validate_list_args(page_size)
        jobs: list[dict] = []
        seen: set[str] = set()
        for page in range(_MAX_LIST_PAGES):
            body = search_body(page, page_size, phases, created_after_ms, created_before_ms)
            call = api_call(self.config, "list_training_jobs", json_body=body)
            payload, response = self._api_json(call)
            payload = expect_dict(call, payload, response.status_code)
            items = payload.get("items") or []
            if not isinstance(items, list):
                raise ModelArtsResponseError(
                    "ModelArts job search answered with 'items' that is not a list",
                    status_code=response.status_code,
                    method=call.method,
                    path=call.path,
                )
            for job in items:
                if not job_matches(job, phases, created_after_ms, created_before_ms):
                    continue
                job_id = str((job.get("metadata") or {}).get("id", ""))
                if job_id and job_id in seen:
                    continue
                seen.add(job_id)
                jobs.append(job)
            total = payload.get("total")
            if len(items) < page_size or (isinstance(total, int) and (page + 1) * page_size >= total):
                break
        return jobs

    def list_training_job_tasks(self, training_job_id: str) -> list[dict]:
        """The tasks (workers) of a training job: ``[{task, ip, host_ip, schedule_count}, ...]``.

        :param training_job_id: the job id.
        """
        call = api_call(self.config, "list_training_job_tasks", training_job_id=training_job_id)
        payload, response = self._api_json(call)
        return task_list(call, payload, response.status_code)

    def stop_training_job(self, training_job_id: str) -> dict:
        """Terminate a training job (``POST .../actions`` with ``action_type: terminate``).

        :param training_job_id: the job id.
        """
        call = api_call(
            self.config,
            "stop_training_job",
            training_job_id=training_job_id,
            json_body={"action_type": "terminate"},
        )
        payload, response = self._api_json(call)
        return expect_dict(call, payload, response.status_code)

    def get_task_log_url(self, training_job_id: str, task_id: str, download: bool = False) -> str:
        """A temporary (about 5 minutes) OBS link to a task's full log; its signature is masked.

        :param training_job_id: the job id.
        :param task_id: the task id, e.g. ``worker-0``.
        :param download: a download link (``application/octet-stream``) instead of a preview link.
        """
        call = log_url_call(self.config, training_job_id, task_id, download)
        payload, response = self._api_json(call)
        return log_url_from(
            call,
            payload,
            response.status_code,
            response.headers.get("X-Request-Id"),
            register=self.mask_log_links,
        )

    def preview_task_log(self, training_job_id: str, task_id: str) -> dict:
        """The last (up to 5 MB) of a task's log: ``{"content", "current_size", "full_size"}``.

        :param training_job_id: the job id.
        :param task_id: the task id.
        """
        call = api_call(self.config, "preview_task_log", training_job_id=training_job_id, task_id=task_id)
        payload, response = self._api_json(call)
        return preview_from(call, payload, response.status_code)

    def service_json(self, method: str, url: str, *, json_body: Any = None) -> tuple[Any, str | None]:
        """Call another Huawei Cloud service of the connection's project (e.g. SMN) over this hook's transport.

        Same signing or IAM token, timeout, retries and typed errors as every ModelArts call.

        :param method: HTTP method.
        :param url: the absolute URL, built from validated parts by the caller.
        :param json_body: the JSON body, if any.
        :return: ``(parsed JSON answer, request id)``.
        """
        call = service_call(method, url, json_body)
        payload, response = self._api_json(call)
        return payload, response.headers.get("X-Request-Id")

    def test_connection(self) -> tuple[bool, str]:
        """Check the connection with a cheap call (a one-job search); never raises.

        One attempt (no retries) with a timeout of at most :data:`TEST_CONNECTION_TIMEOUT` seconds, so
        Airflow's connection test answers quickly; the message says where the request went and why it
        failed.
        """
        try:
            config = self.config
            probe = ModelArtsHook(
                self.modelarts_conn_id,
                max_retries=0,
                request_timeout=min(self.options.timeout_for(config), TEST_CONNECTION_TIMEOUT),
            )
            probe.__dict__["config"] = config  # the connection as already read, not a second lookup
            call = api_call(config, "list_training_jobs", json_body=search_body(0, 1, None, None, None))
            payload, response = probe._api_json(call)
            expect_dict(call, payload, response.status_code)
        except Exception as err:
            return False, f"{type(err).__name__}: {err}"
        return True, f"Connected to ModelArts at {config.endpoint} (project {config.project_id})."

    def open_log_stream(
        self, url: str, *, offset: int = 0, timeout: float | None = None
    ) -> requests.Response:
        """Open a pre-signed log link as a byte stream (``stream=True``), from byte ``offset``.

        Transport errors, 5xx and 429 are retried. The caller closes the response. The answer is 200
        (whole object, e.g. when the server ignores ``Range``) or 206. The link is read with
        :attr:`link_session` (no API cookies or headers), redirects are not followed, ``user:pass@``
        is refused and the host must match the connection's ``log_link_hosts`` (when set).

        :param url: the link from :meth:`get_task_log_url`.
        :param offset: first byte wanted; sends ``Range: bytes={offset}-`` when > 0.
        :param timeout: per-request timeout (connect and between bytes).
        :raises ModelArtsLogLinkExpiredError: OBS says the link expired.
        :raises ModelArtsApiError: any other error answer (``error_code`` from the XML ``<Code>``).
        :raises ModelArtsValidationError: a link with credentials, or to a host not allowed.
        """
        call = obs_call(url, offset)
        check_link_host(url, self.config.log_link_hosts)
        return self._send(call, stream=True, timeout=timeout, session=self.link_session)

    @cached_property
    def link_session(self) -> requests.Session:
        """The session that reads log links: none of the API session's cookies or headers, and no
        credentials or proxies from the environment (``.netrc`` would add Basic auth)."""
        session = requests.Session()
        session.trust_env = False
        session.headers["User-Agent"] = USER_AGENT
        return session

    def read_log_range(self, url: str, *, start: int, length: int) -> dict[str, Any]:
        """Read at most ``length`` bytes of a log link from byte ``start`` (``Range: bytes=start-end``).

        :param url: a link from :meth:`get_task_log_url`.
        :param start: first byte wanted.
        :param length: most bytes wanted.
        :return: ``{"data", "start", "total"}``: the bytes, the offset of their first byte (0 when the
            server ignored ``Range`` and sent the whole object) and the log size if known. A start at
            or past the end gives no data (``start`` as asked): whether the server answers 416 or, as
            OBS does for an invalid range, 200 with the whole object, whose body is then not read when
            its ``Content-Length`` shows it ends by ``start``. Of a whole object, at most
            ``start + length`` bytes are read.
        :raises ModelArtsLogLinkExpiredError: OBS says the link expired.
        """
        call = range_call(url, start, length, self.config.log_link_hosts)
        try:
            response = self._send(call, stream=True)
        except ModelArtsApiError as err:
            if err.status_code == 416:
                return {"data": b"", "start": start, "total": None}
            raise
        with response:  # closing an unread or partly read body drops the connection: no more is sent
            size = whole_object_ends_by(response.status_code, response.headers, start)
            if size is not None:  # Range ignored (invalid range: OBS sends the whole object), nothing new
                return {"data": b"", "start": start, "total": size}
            first, total = content_range(response.status_code, response.headers.get("Content-Range"))
            wanted = length if first is not None else start + length
            data = response.raw.read(wanted, decode_content=True) or b""
        if first is None:
            total = total if total is not None else range_total(response.headers, data, wanted)
            first = 0
        return {"data": data, "start": first, "total": total}

    def get_training_job_events(
        self, training_job_id: str, *, level: str | None = None, limit: int = 10, order: str = "desc"
    ) -> list[dict]:
        """Events of a training job (``GET .../events``): ``[{"message", "level", "time", "source"}]``.

        :param training_job_id: the job id.
        :param level: ``Info``, ``Warning`` or ``Error``; None for all.
        :param limit: 1 to 100 events.
        :param order: ``desc`` (newest first) or ``asc``.
        """
        call = events_call(self.config, training_job_id, level, limit, order)
        payload, response = self._api_json(call)
        return event_list(call, payload, response.status_code)

    def console_url(self, training_job_id: str) -> str:
        """Link to the job in the ModelArts console of the connection's region (no network).

        ``""`` when the connection has no region (only an ``endpoint``): there is no console to link to,
        and the extra link then shows nothing.

        :param training_job_id: the job id.
        """
        return console_url(self.config, training_job_id)

    @staticmethod
    def log_url_expires_at(url: str, *, default_ttl: int = DEFAULT_LOG_LINK_TTL) -> datetime:
        """When a log link expires (UTC): its ``Expires`` query parameter, else now + ``default_ttl``.

        :param url: the link.
        :param default_ttl: seconds assumed when the link carries no expiry.
        """
        return log_url_expires_at(url, default_ttl=default_ttl)
