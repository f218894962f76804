"""What the sync and async ModelArts hooks share: their retry and timeout options and the answer check.

Data flows one way: a hook builds an :class:`~airflow_provider_modelarts.hooks.calls.ApiCall`, signs it
(:func:`~airflow_provider_modelarts.hooks.calls.authorize`) or lets
:class:`~airflow_provider_modelarts.auth.IamTokenAuth` add the token, sends it under
:func:`~airflow_provider_modelarts.retry.retry_policy`, and turns the answer into a value
(:mod:`~airflow_provider_modelarts.hooks.answers`) or a typed error (:func:`raise_for_answer`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import tenacity
from airflow.providers.common.compat.sdk import BaseHook

from airflow_provider_modelarts.connection import DEFAULT_CONN_ID, ModelArtsConnectionConfig
from airflow_provider_modelarts.hooks.calls import ApiCall
from airflow_provider_modelarts.redaction import install_urllib3_log_filter
from airflow_provider_modelarts.retry import retry_policy

__all__ = ["ERROR_BODY_LIMIT", "HookOptions", "ModelArtsHookBase", "raise_for_answer"]

ERROR_BODY_LIMIT = 64 * 1024
"""Most bytes of an error answer read to build the error."""


class HookOptions:
    """Per-hook overrides of the connection's ``max_retries`` and ``request_timeout``.

    :param retry_wait: a tenacity wait strategy replacing the default backoff.
    :param max_retries: retries after the first attempt; None for the connection's.
    :param request_timeout: per-request timeout in seconds; None for the connection's.
    """

    def __init__(
        self,
        *,
        retry_wait: tenacity.wait.wait_base | None,
        max_retries: int | None,
        request_timeout: float | None,
    ) -> None:
        self.retry_wait = retry_wait
        self.max_retries = max_retries
        self.request_timeout = request_timeout
        install_urllib3_log_filter()

    def retrying(self, config: ModelArtsConnectionConfig) -> dict[str, Any]:
        """Keyword arguments of ``tenacity.Retrying``/``AsyncRetrying`` for a call of this hook."""
        max_retries = config.max_retries if self.max_retries is None else self.max_retries
        return retry_policy(max_retries=max_retries, wait=self.retry_wait)

    def timeout_for(self, config: ModelArtsConnectionConfig, timeout: float | None = None) -> float:
        """The timeout of one request: ``timeout`` if given, else the hook's, else the connection's."""
        if timeout is not None:
            return timeout
        return config.request_timeout if self.request_timeout is None else self.request_timeout


def raise_for_answer(
    call: ApiCall, status: int, headers: Mapping[str, str], read_body: Callable[[], bytes]
) -> None:
    """Return if ``status`` is 2xx; else raise the typed error the answer deserves.

    :param call: the call answered.
    :param status: the HTTP status.
    :param headers: the answer's headers.
    :param read_body: reads (at most :data:`ERROR_BODY_LIMIT` bytes of) the body; b"" if that fails.
    """
    if 200 <= status < 300:
        return
    raise call.error_answer(status, headers, read_body())


class ModelArtsHookBase(BaseHook):
    """The connection id and per-hook options of both ModelArts hooks.

    :param modelarts_conn_id: the ``modelarts`` connection id.
    :param retry_wait: a tenacity wait strategy replacing the default backoff (which also honours
        ``Retry-After``); e.g. ``tenacity.wait_none()`` in tests.
    :param max_retries: retries after the first attempt; default from the connection (5).
    :param request_timeout: per-request timeout in seconds; default from the connection's extra
        ``request_timeout`` (30).
    """

    conn_name_attr = "modelarts_conn_id"
    default_conn_name = DEFAULT_CONN_ID
    conn_type = "modelarts"

    def __init__(
        self,
        modelarts_conn_id: str = default_conn_name,
        *,
        retry_wait: tenacity.wait.wait_base | None = None,
        max_retries: int | None = None,
        request_timeout: float | None = None,
    ) -> None:
        super().__init__()
        self.modelarts_conn_id = modelarts_conn_id
        self.options = HookOptions(
            retry_wait=retry_wait, max_retries=max_retries, request_timeout=request_timeout
        )

    @property
    def request_timeout(self) -> float | None:
        """This hook's per-request timeout in seconds; None for the connection's ``request_timeout``."""
        return self.options.request_timeout
