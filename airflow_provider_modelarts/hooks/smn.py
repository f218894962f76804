"""Publishing to Huawei Cloud Simple Message Notification (SMN) topics over the ModelArts hook's transport.

SMN is reached with the ``modelarts`` connection's credentials and project: the request is signed (or
carries the IAM token), timed out, retried and turned into typed errors by
:meth:`~airflow_provider_modelarts.hooks.modelarts.ModelArtsHook.service_json`, the same choke point as
every ModelArts call. This module only knows SMN's URLs, topic URNs and answers.
"""

from __future__ import annotations

import re
from typing import Any

from airflow_provider_modelarts.connection import ModelArtsConnectionConfig
from airflow_provider_modelarts.exceptions import (
    ModelArtsApiError,
    ModelArtsConfigError,
    ModelArtsResponseError,
    ModelArtsValidationError,
)
from airflow_provider_modelarts.hooks.modelarts import ModelArtsAsyncHook, ModelArtsHook

__all__ = [
    "PUBLISH_PATH",
    "TOPIC_URN_PATTERN",
    "apublish_message",
    "publish_message",
    "publish_url",
    "smn_endpoint",
    "validate_topic_urn",
]

PUBLISH_PATH = "/v2/{project_id}/notifications/topics/{topic_urn}/publish"
"""``POST``: publish one message to a topic (IAM action ``smn:topic:publish``)."""

TOPIC_URN_PATTERN = re.compile(
    r"urn:smn:(?P<region>[a-z0-9]+(?:-[a-z0-9]+)*):(?P<project_id>[A-Za-z0-9]{1,64})"
    r":(?P<name>[A-Za-z0-9][A-Za-z0-9_-]{0,254})"
)
"""``urn:smn:{region}:{project_id}:{topic_name}``; a topic name is 1-255 letters, digits, ``-`` or ``_``
and starts with a letter or a digit."""


def validate_topic_urn(value: Any) -> dict[str, str]:
    """The parts (``region``, ``project_id``, ``name``) of a valid SMN topic URN.

    :param value: the topic URN, e.g. ``urn:smn:cn-north-4:0123...cdef:modelarts-alerts``.
    :raises ModelArtsValidationError: ``value`` is not a string of that form.
    """
    if not isinstance(value, str):
        raise ModelArtsValidationError(f"topic_urn must be a string, got {type(value).__name__}")
    match = TOPIC_URN_PATTERN.fullmatch(value.strip())
    if match is None:
        raise ModelArtsValidationError(
            "topic_urn must look like urn:smn:{region}:{project_id}:{topic_name} (topic name: 1-255 "
            f"letters, digits, '-' or '_'), got {value!r:.120}"
        )
    return match.groupdict()


def smn_endpoint(config: ModelArtsConnectionConfig) -> str:
    """The SMN base URL: extra ``smn_endpoint``, else ``https://smn.{region}.myhuaweicloud.com``.

    :param config: the parsed ``modelarts`` connection.
    :raises ModelArtsConfigError: neither ``smn_endpoint`` nor ``region`` is known.
    """
    if config.smn_endpoint:
        return config.smn_endpoint
    if not config.region:
        raise ModelArtsConfigError(
            "SMN needs the connection extra 'region' (e.g. cn-north-4) or 'smn_endpoint' (https://host[:port])"
        )
    return f"https://smn.{config.region}.myhuaweicloud.com"


def publish_url(config: ModelArtsConnectionConfig, topic_urn: str) -> str:
    """The publish URL of ``topic_urn``; checks that the topic is in the connection's region.

    SMN endpoints and project ids are regional, so a topic of another region can never be reached
    with this connection: that is reported before any request.

    :param config: the parsed ``modelarts`` connection.
    :param topic_urn: the topic URN.
    :raises ModelArtsValidationError: bad URN, or a topic outside the connection's region.
    """
    parts = validate_topic_urn(topic_urn)
    if config.region and not config.smn_endpoint and parts["region"] != config.region:
        raise ModelArtsValidationError(
            f"topic_urn is in region {parts['region']!r} but the connection is for region "
            f"{config.region!r}; use a connection of the topic's region"
        )
    # A validated URN holds only letters, digits, '-', '_' and ':' (sent as is, as in SMN's examples).
    path = PUBLISH_PATH.format(project_id=config.project_id, topic_urn=topic_urn.strip())
    return smn_endpoint(config) + path


def _answer(topic_urn: str, payload: Any, request_id: str | None) -> dict[str, Any]:
    if not isinstance(payload, dict) or not isinstance(payload.get("message_id"), str):
        raise ModelArtsResponseError(
            f"SMN accepted the message for {topic_urn} but answered without a message_id",
            request_id=request_id,
        )
    return {"message_id": payload["message_id"], "request_id": payload.get("request_id") or request_id}


def _smn_error(err: ModelArtsApiError, topic_urn: str) -> ModelArtsApiError:
    """The same error type and fields, with a message that names SMN and the topic."""
    if err.status_code is None:
        text = f"SMN did not answer the publish to {topic_urn}: {err}"
    else:
        text = f"SMN refused the publish to {topic_urn}" + (f": {err.error_msg}" if err.error_msg else "")
    return type(err)(
        text,
        status_code=err.status_code,
        error_code=err.error_code,
        error_msg=err.error_msg,
        request_id=err.request_id,
        method=err.method,
        path=err.path,
    )


def publish_message(hook: ModelArtsHook, *, topic_urn: str, body: dict[str, Any]) -> dict[str, Any]:
    """Publish ``body`` (``subject`` + ``message`` or ``message_structure``) to ``topic_urn``.

    :param hook: the hook whose connection, credentials and transport are used.
    :param topic_urn: the topic URN.
    :param body: the publish body, already within SMN's limits.
    :return: ``{"message_id", "request_id"}``.
    :raises ModelArtsApiError: SMN refused (``error_code`` such as ``SMN.0006``) or did not answer.
    """
    url = publish_url(hook.config, topic_urn)
    try:
        payload, request_id = hook.service_json("POST", url, json_body=body)
    except ModelArtsApiError as err:
        raise _smn_error(err, topic_urn) from err
    return _answer(topic_urn, payload, request_id)


async def apublish_message(
    hook: ModelArtsAsyncHook, *, topic_urn: str, body: dict[str, Any]
) -> dict[str, Any]:
    """Async :func:`publish_message` (the event loop is never blocked).

    :param hook: the async hook whose connection, credentials and transport are used.
    :param topic_urn: the topic URN.
    :param body: the publish body, already within SMN's limits.
    :return: ``{"message_id", "request_id"}``.
    """
    url = publish_url(await hook.get_config(), topic_urn)
    try:
        payload, request_id = await hook.service_json("POST", url, json_body=body)
    except ModelArtsApiError as err:
        raise _smn_error(err, topic_urn) from err
    return _answer(topic_urn, payload, request_id)
