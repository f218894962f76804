"""The non-blocking ModelArts hook of the triggers, over ``httpx``, and the hooks triggers share.

:class:`ModelArtsAsyncHook` builds the same calls, signs them the same way, shares the process-wide IAM
token cache and checks the answers with the same functions as
:class:`~airflow_provider_modelarts.hooks.modelarts.ModelArtsHook`; only the I/O differs.
:data:`shared_hooks` gives the triggers of one event loop one hook (so one connection pool) per
connection id.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import tenacity
from airflow.providers.common.compat.sdk import BaseHook, mask_secret

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
    ModelArtsValidationError,
)
from airflow_provider_modelarts.hooks.answers import (
    content_range,
    event_list,
    expect_dict,
    json_answer,
    log_url_from,
    parse_token,
    preview_from,
    range_total,
    whole_object_ends_by,
)
from airflow_provider_modelarts.hooks.calls import (
    USER_AGENT,
    ApiCall,
    api_call,
    authorize,
    events_call,
    log_url_call,
    needs_token,
    range_call,
    rate_limiter,
    service_call,
    token_call,
    validate_list_args,
)
from airflow_provider_modelarts.hooks.common import ERROR_BODY_LIMIT, ModelArtsHookBase, raise_for_answer

__all__ = ["ModelArtsAsyncHook", "SharedHook", "SharedHooks", "shared_hooks"]


async def _amask(secret: str) -> None:
    """Register a secret from async code without blocking the triggerer's event loop."""
    try:
        from airflow.sdk.log import amask_secret
    except ImportError:
        mask_secret(secret)
    else:
        await amask_secret(secret)


async def _read_at_most(response: httpx.Response, limit: int) -> bytes:
    """At most ``limit`` bytes of a streamed body (decoded); stops reading there, never holds more."""
    parts: list[bytes] = []
    size = 0
    chunks = response.aiter_bytes()
    try:
        async for chunk in chunks:
            parts.append(chunk[: limit - size])
            size += len(parts[-1])
            if size >= limit:
                break
    finally:
        if isinstance(chunks, AsyncGenerator):  # finish it now, not when it is garbage collected
            await chunks.aclose()
    return b"".join(parts)


async def _error_body(response: httpx.Response) -> bytes:
    """The start (:data:`ERROR_BODY_LIMIT` bytes at most) of a streamed error answer's body, b"" if it
    cannot be read; closes the response."""
    try:
        return await _read_at_most(response, ERROR_BODY_LIMIT)
    except Exception:
        return b""
    finally:
        await response.aclose()


class ModelArtsAsyncHook(ModelArtsHookBase):
    """Non-blocking ModelArts client for triggers, over ``httpx.AsyncClient``.

    Shares the request building, signing, error parsing, retry predicate and the process-wide IAM token
    cache with :class:`ModelArtsHook`.

    :param modelarts_conn_id: the ``modelarts`` connection id.
    :param retry_wait: a tenacity wait strategy replacing the default backoff.
    :param max_retries: retries after the first attempt; default from the connection.
    :param request_timeout: per-request timeout in seconds; default from the connection's extra
        ``request_timeout``.
    :param transport: an ``httpx`` transport to use instead of the network (e.g. ``httpx.MockTransport``).
    """

    hook_name = "Huawei Cloud ModelArts (async)"

    def __init__(
        self,
        modelarts_conn_id: str = ModelArtsHookBase.default_conn_name,
        *,
        retry_wait: tenacity.wait.wait_base | None = None,
        max_retries: int | None = None,
        request_timeout: float | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(
            modelarts_conn_id,
            retry_wait=retry_wait,
            max_retries=max_retries,
            request_timeout=request_timeout,
        )
        self._transport = transport
        self._config: ModelArtsConnectionConfig | None = None
        self._client: httpx.AsyncClient | None = None
        self._token_auth: IamTokenAuth | None = None
        self._config_expired = False
        self._retired_clients: list[httpx.AsyncClient] = []
        self._setup_lock = asyncio.Lock()

    async def get_config(self) -> ModelArtsConnectionConfig:
        """The parsed connection, read once (however many callers ask at once) without blocking the loop.

        After :meth:`expire_config` it is read again; if its settings changed, the next request builds a
        new HTTP client (and IAM token auth) from them, while requests in flight finish on the old one.
        """
        if self._config is None or self._config_expired:
            async with self._setup_lock:
                if self._config is None or self._config_expired:
                    config = await self._read_config()
                    if self._config is not None and config != self._config:
                        self._retire_client()
                    self._config, self._config_expired = config, False
        return self._config

    def expire_config(self) -> None:
        """Read the connection again on the next call (see :meth:`get_config`)."""
        self._config_expired = True

    def _retire_client(self) -> None:
        if self._client is not None:
            self._retired_clients.append(self._client)
        self._client = None
        self._token_auth = None

    async def _read_config(self) -> ModelArtsConnectionConfig:
        getter: Callable[..., Any] | None = getattr(BaseHook, "aget_connection", None)
        conn = None
        if getter is not None:
            try:
                conn = await getter(self.modelarts_conn_id)
            except ImportError:
                # Airflow < 3.2 outside a task or triggerer: there is no supervisor to ask; the
                # blocking lookup (secrets backends, environment) runs in a thread instead.
                conn = None
        if conn is None:
            conn = await asyncio.to_thread(read_connection, self.get_connection, self.modelarts_conn_id)
        secrets: list[str] = []
        try:
            config = parse_connection(conn, self.modelarts_conn_id, mask=secrets.append)
        finally:
            for secret in secrets:
                await _amask(secret)
        if config.verify is False:
            warn_verify_disabled()
        return config

    async def get_client(self) -> httpx.AsyncClient:
        """The hook's ``httpx.AsyncClient``, built once on first use in a worker thread.

        Building it loads the CA bundle into a new SSL context (50-100 ms of CPU); doing that in a thread
        keeps the event loop, and every other trigger sharing it, running meanwhile. Callers that ask
        while it is being built wait for that one build.
        """
        if self._client is None:
            config = await self.get_config()
            async with self._setup_lock:
                if self._client is None:
                    self._client = await asyncio.to_thread(self._build_client, config)
        return self._client

    async def warm_up(self) -> None:
        """Read the connection and build the HTTP client now rather than on the first request.

        Optional: the first request does the same; errors are those the first request would raise.
        """
        await self.get_client()

    def _build_client(self, config: ModelArtsConnectionConfig) -> httpx.AsyncClient:
        verify: bool | ssl.SSLContext
        if isinstance(config.verify, str):
            verify = ssl.create_default_context(cafile=config.verify)
        else:
            verify = config.verify
        return httpx.AsyncClient(
            verify=verify,
            transport=self._transport,
            headers={"User-Agent": USER_AGENT},
            follow_redirects=False,
        )

    async def close(self) -> None:
        """Close the HTTP client (and any client a changed connection replaced)."""
        self._retire_client()
        retired, self._retired_clients = self._retired_clients, []
        for client in retired:
            await client.aclose()

    def _auth_for(self, config: ModelArtsConnectionConfig) -> IamTokenAuth:
        if self._token_auth is None:

            async def afetch() -> IamToken:
                response = await self._send(token_call(config))
                secrets: list[str] = []
                token = parse_token(response.status_code, response.headers, response.content, secrets.append)
                for secret in secrets:
                    await _amask(secret)
                return token

            self._token_auth = IamTokenAuth(config.token_key, afetch=afetch)
        return self._token_auth

    async def _send(
        self, call: ApiCall, *, timeout: float | None = None, stream: bool = False
    ) -> httpx.Response:
        """Send ``call`` with retries; return a 2xx response or raise a :class:`ModelArtsApiError`.

        The body of the response is read, unless ``stream``: then it is left unread for the caller to
        read (``aiter_bytes``) and close (``aclose``), and of an error answer at most
        :data:`ERROR_BODY_LIMIT` bytes are read.
        """
        client = await self.get_client()
        config = await self.get_config()
        request_timeout = self.options.timeout_for(config, timeout)
        limiter = rate_limiter(config, call)
        auth: httpx.Auth | None = self._auth_for(config) if needs_token(config, call) else None

        async def attempt() -> httpx.Response:
            if limiter is not None:
                await limiter.aacquire()
            url, headers, body = authorize(config, call)
            request = client.build_request(
                call.method, url, headers=headers, content=body, timeout=request_timeout
            )
            try:
                # What client.request does, with the body optionally left unread.
                response = await client.send(request, auth=auth or httpx.USE_CLIENT_DEFAULT, stream=stream)
            except httpx.HTTPError as err:
                raise call.no_answer(err) from err
            if limiter is not None:
                limiter.record(response.status_code)
            if stream and not response.is_success:
                error_body = await _error_body(response)  # bounded, and the response is closed
                raise_for_answer(call, response.status_code, response.headers, lambda: error_body)
            else:
                raise_for_answer(
                    call, response.status_code, response.headers, lambda: response.content[:ERROR_BODY_LIMIT]
                )
            return response

        return await tenacity.AsyncRetrying(**self.options.retrying(config))(attempt)

    async def _api_json(self, call: ApiCall) -> tuple[Any, httpx.Response]:
        response = await self._send(call)
        return json_answer(call, response.status_code, response.headers, response.content), response

    async def get_training_job(self, training_job_id: str) -> dict:
        """Details of a training job.

        :param training_job_id: the job id.
        """
        call = api_call(await self.get_config(), "get_training_job", training_job_id=training_job_id)
        payload, response = await self._api_json(call)
        return expect_dict(call, payload, response.status_code)

    async def search_training_jobs(
        self,
        *,
        filters: list[dict[str, Any]] | None = None,
        offset: int = 0,
        limit: int = 50,
        sort_by: str = "create_time",
        order: str = "desc",
    ) -> dict[str, Any]:
        """One page of ``POST /v2/{project_id}/training-job-searches``; ``items`` is checked to be a list.

        :param filters: ``[{key, operator, value: [str]}]`` as documented for the search API.
        :param offset: the page index (not a row offset), 0 or more.
        :param limit: jobs per page, 1-50.
        :param sort_by: the sort field, e.g. ``create_time``.
        :param order: ``asc`` or ``desc``.
        """
        validate_list_args(limit)
        if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
            raise ModelArtsValidationError(f"offset must be an integer >= 0, got {offset!r}")
        if order not in ("asc", "desc"):
            raise ModelArtsValidationError(f"order must be 'asc' or 'desc', got {order!r:.40}")
        body: dict[str, Any] = {"offset": offset, "limit": limit, "sort_by": sort_by, "order": order}
        if filters:
            body["filters"] = filters
        call = api_call(await self.get_config(), "list_training_jobs", json_body=body)
        payload, response = await self._api_json(call)
        page = expect_dict(call, payload, response.status_code)
        if not isinstance(page.get("items") or [], list):
            raise ModelArtsResponseError(
                "ModelArts job search answered with 'items' that is not a list",
                status_code=response.status_code,
                method=call.method,
                path=call.path,
            )
        return page

    async def get_task_log_url(
        self, training_job_id: str, task_id: str, download: bool = False, *, mask: bool = True
    ) -> str:
        """A temporary OBS link to a task's log; its signature is masked.

        :param training_job_id: the job id.
        :param task_id: the task id.
        :param download: a download link instead of a preview link.
        :param mask: register the signature with the secret masker. Only a caller that keeps the link
            in memory and never logs or raises it may pass False: in a long-lived triggerer every
            registered secret stays for good and makes each later registration and log line slower.
        """
        call = log_url_call(await self.get_config(), training_job_id, task_id, download)
        payload, response = await self._api_json(call)
        secrets: list[str] = []
        url = log_url_from(
            call, payload, response.status_code, response.headers.get("X-Request-Id"), secrets.append
        )
        for secret in secrets if mask else []:
            await _amask(secret)
        return url

    async def preview_task_log(self, training_job_id: str, task_id: str) -> dict:
        """The last (up to 5 MB) of a task's log: ``{"content", "current_size", "full_size"}``.

        :param training_job_id: the job id.
        :param task_id: the task id.
        """
        config = await self.get_config()
        call = api_call(config, "preview_task_log", training_job_id=training_job_id, task_id=task_id)
        payload, response = await self._api_json(call)
        return preview_from(call, payload, response.status_code)

    async def get_training_job_events(
        self, training_job_id: str, *, level: str | None = None, limit: int = 10, order: str = "desc"
    ) -> list[dict]:
        """Events of a training job; see :meth:`ModelArtsHook.get_training_job_events`."""
        call = events_call(await self.get_config(), training_job_id, level, limit, order)
        payload, response = await self._api_json(call)
        return event_list(call, payload, response.status_code)

    async def read_log_range(self, url: str, *, start: int, length: int) -> dict[str, Any]:
        """Read at most ``length`` bytes of a log link from byte ``start``; see :meth:`ModelArtsHook.read_log_range`.

        The body is streamed: of a whole-object answer (``Range`` ignored) at most ``start + length``
        bytes are held, and none when its ``Content-Length`` shows it ends by ``start``.
        """
        call = range_call(url, start, length, (await self.get_config()).log_link_hosts)
        try:
            response = await self._send(call, stream=True)
        except ModelArtsApiError as err:
            if err.status_code == 416:
                return {"data": b"", "start": start, "total": None}
            raise
        try:  # closing an unread or partly read body drops the connection: no more is sent
            size = whole_object_ends_by(response.status_code, response.headers, start)
            if size is not None:  # Range ignored (invalid range: OBS sends the whole object), nothing new
                return {"data": b"", "start": start, "total": size}
            first, total = content_range(response.status_code, response.headers.get("Content-Range"))
            wanted = length if first is not None else start + length
            try:
                data = await _read_at_most(response, wanted)
            except httpx.HTTPError as err:
                raise call.no_answer(err) from err
        finally:
            await response.aclose()
        if first is None:
            return {"data": data, "start": 0, "total": range_total(response.headers, data, wanted)}
        return {"data": data, "start": first, "total": total}

    async def service_json(self, method: str, url: str, *, json_body: Any = None) -> tuple[Any, str | None]:
        """Async :meth:`ModelArtsHook.service_json`: another Huawei Cloud service over this hook's transport.

        :param method: HTTP method.
        :param url: the absolute URL, built from validated parts by the caller.
        :param json_body: the JSON body, if any.
        :return: ``(parsed JSON answer, request id)``.
        """
        call = service_call(method, url, json_body)
        payload, response = await self._api_json(call)
        return payload, response.headers.get("X-Request-Id")


@dataclass
class SharedHook:
    """A hook shared by the triggers of one event loop, the semaphore capping their requests in flight and
    how many triggers use it."""

    hook: ModelArtsAsyncHook
    in_flight: asyncio.Semaphore
    users: int = 0
    checked_at: float = 0.0


class SharedHooks:
    """One ``ModelArtsAsyncHook`` (so one httpx client) per event loop and connection id.

    Hundreds of triggers watching jobs in one triggerer share a connection pool instead of each
    opening its own; the last trigger to leave closes the client. The hook reads the connection and
    builds its client once, off the event loop (:meth:`ModelArtsAsyncHook.get_client`). A semaphore caps
    the polls in flight per client: httpcore's pool does work proportional to its queue length for
    every request it assigns, so hundreds of simultaneous requests queued inside it cost quadratic CPU
    on the event loop, while waiting on a semaphore costs nothing.
    """

    max_in_flight = 32
    recheck_after = 60.0
    """A trigger joining a hook older than this (seconds) makes it read the connection again: a changed
    connection (new endpoint, credentials, TLS settings) then gets a new client instead of the old one."""

    def __init__(self) -> None:
        self._hooks: dict[tuple[int, str], SharedHook] = {}

    def acquire(self, conn_id: str, factory: Callable[[str], ModelArtsAsyncHook]) -> SharedHook:
        """The shared hook of ``conn_id`` in the running loop, made by ``factory`` when there is none.

        :param conn_id: the connection id.
        :param factory: builds a hook for a connection id.
        """
        key = (id(asyncio.get_running_loop()), conn_id)
        entry = self._hooks.get(key)
        now = time.monotonic()
        if entry is None:
            entry = self._hooks[key] = SharedHook(
                factory(conn_id), asyncio.Semaphore(self.max_in_flight), checked_at=now
            )
        elif now - entry.checked_at > self.recheck_after:
            entry.hook.expire_config()
            entry.checked_at = now
        entry.users += 1
        return entry

    async def release(self, conn_id: str) -> None:
        """One trigger of ``conn_id`` is done; the last one closes the hook's client.

        :param conn_id: the connection id.
        """
        key = (id(asyncio.get_running_loop()), conn_id)
        entry = self._hooks.get(key)
        if entry is None:
            return
        entry.users -= 1
        if entry.users <= 0:
            del self._hooks[key]
            await entry.hook.close()

    def __len__(self) -> int:
        return len(self._hooks)


shared_hooks = SharedHooks()
"""The registry every trigger of the provider uses."""
