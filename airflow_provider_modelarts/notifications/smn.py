"""Failure alerts through Huawei Cloud Simple Message Notification (SMN) topics.

:class:`SmnNotifier` publishes one message to an SMN topic, whose subscriptions (e-mail, SMS, HTTP(S),
FunctionGraph, DingTalk, WeCom, Feishu, WeLink) deliver it. It fits the message into SMN's limits
before sending, so a long failure digest never makes SMN reject the alert.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from airflow.providers.common.compat.sdk import BaseNotifier

from airflow_provider_modelarts.connection import DEFAULT_CONN_ID
from airflow_provider_modelarts.exceptions import ModelArtsValidationError
from airflow_provider_modelarts.hooks.modelarts import ModelArtsAsyncHook, ModelArtsHook
from airflow_provider_modelarts.hooks.smn import apublish_message, publish_message, validate_topic_urn
from airflow_provider_modelarts.notifications.modelarts import TemplatableDag, make_context_templatable

if TYPE_CHECKING:
    import jinja2
    from airflow.providers.common.compat.sdk import Context

__all__ = [
    "MESSAGE_LIMIT_BYTES",
    "PROTOCOLS",
    "SMS_PARTS",
    "SMS_PART_CHARS_ASCII",
    "SMS_PART_CHARS_OTHER",
    "SUBJECT_LIMIT_BYTES",
    "SmnNotifier",
    "build_publish_body",
    "fit_message",
    "fit_sms",
    "fit_subject",
    "full_log_location",
]

SUBJECT_LIMIT_BYTES = 512
"""SMN's limit for ``subject`` (UTF-8 bytes)."""
MESSAGE_LIMIT_BYTES = 256 * 1024
"""SMN's limit for ``message`` and for the ``message_structure`` JSON string (UTF-8 bytes)."""
SMS_PART_CHARS_ASCII = 459
"""Characters per SMS part when the text is all ASCII."""
SMS_PART_CHARS_OTHER = 201
"""Characters per SMS part when the text has any non-ASCII character."""
SMS_PARTS = 2
"""SMN splits a long SMS and sends only this many parts."""
PROTOCOLS = frozenset(
    {
        "default",
        "email",
        "sms",
        "http",
        "https",
        "functionstage",
        "functiongraph",
        "dingding",
        "wechat",
        "feishu",
        "welink",
    }
)
"""The ``message_structure`` keys SMN knows; ``default`` is required."""

_MARKER = "..."


def _cut_head(data: bytes, size: int) -> str:
    """The longest start of ``data`` of at most ``size`` bytes that ends on a UTF-8 character boundary."""
    return data[: max(0, size)].decode("utf-8", errors="ignore")


def _cut_tail(data: bytes, size: int) -> str:
    """The longest end of ``data`` of at most ``size`` bytes that starts on a UTF-8 character boundary."""
    if size <= 0:
        return ""
    return data[-size:].decode("utf-8", errors="ignore")


def fit_subject(subject: str, *, limit: int = SUBJECT_LIMIT_BYTES) -> str:
    """``subject`` on one line (whitespace runs become one space) and at most ``limit`` UTF-8 bytes.

    A longer subject is cut on a character boundary and ends with ``...``.

    :param subject: the rendered subject.
    :param limit: the byte limit.
    """
    line = " ".join(subject.split())
    data = line.encode("utf-8")
    if len(data) <= limit:
        return line
    return _cut_head(data, limit - len(_MARKER)) + _MARKER


def fit_message(text: str, *, where: str, limit: int = MESSAGE_LIMIT_BYTES) -> str:
    """``text`` within ``limit`` UTF-8 bytes; a longer one keeps its start and its end.

    The start names the job and what failed, the end holds the last log lines; between them a note
    says how much was left out and where the full log is.

    :param text: the rendered message.
    :param where: where the full log can be read (links, console, task log), for the note.
    :param limit: the byte limit.
    """
    data = text.encode("utf-8")
    if len(data) <= limit:
        return text
    note = f"\n[... {{cut}} bytes cut to fit SMN's {limit // 1024} KB limit; full log: {where} ...]\n"
    budget = limit - len(note.format(cut=len(data)).encode("utf-8"))
    if budget < 64:
        raise ModelArtsValidationError(f"the note about where the full log is does not fit in {limit} bytes")
    head = _cut_head(data, budget // 3)
    tail = _cut_tail(data, budget - len(head.encode("utf-8")))
    cut = len(data) - len(head.encode("utf-8")) - len(tail.encode("utf-8"))
    return head + note.format(cut=cut) + tail


def _sms_limit(text: str) -> int:
    return SMS_PARTS * (SMS_PART_CHARS_ASCII if text.isascii() else SMS_PART_CHARS_OTHER)


def fit_sms(text: str) -> str:
    """``text`` short enough for SMN to send it whole as an SMS (its first two parts).

    Two parts hold 918 characters of ASCII text, or 402 characters if any character is not ASCII. A
    longer text is cut and ends with ``...``.

    :param text: the rendered SMS text.
    """
    limit = _sms_limit(text)
    if len(text) <= limit:
        return text
    return text[: limit - len(_MARKER)] + _MARKER


def _structure_json(entries: Mapping[str, str]) -> str:
    return json.dumps(dict(entries), ensure_ascii=False, separators=(",", ":"))


def _fit_structure(entries: dict[str, str], *, where: str, limit: int) -> str:
    """The ``message_structure`` JSON string within ``limit`` bytes, cutting its longest entries."""
    if "sms" in entries:
        entries["sms"] = fit_sms(entries["sms"])
    for key, value in entries.items():
        if key != "sms":
            entries[key] = fit_message(value, where=where, limit=limit)
    encoded = _structure_json(entries)
    for _ in range(2 * len(entries) + 2):
        excess = len(encoded.encode("utf-8")) - limit
        if excess <= 0:
            return encoded
        longest = max((k for k in entries if k != "sms"), key=lambda k: len(entries[k].encode("utf-8")))
        size = len(entries[longest].encode("utf-8"))
        # JSON escapes (\n, \") make the string longer than its text: ask for twice the excess back.
        entries[longest] = fit_message(entries[longest], where=where, limit=max(1024, size - 2 * excess))
        encoded = _structure_json(entries)
    if len(encoded.encode("utf-8")) > limit:
        raise ModelArtsValidationError(f"message_structure cannot be cut to SMN's {limit} byte limit")
    return encoded


def _require_str(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise ModelArtsValidationError(f"{name} must be a string after rendering, got {type(value).__name__}")
    return value


def _check_structure(message_structure: Any) -> dict[str, str]:
    if not isinstance(message_structure, Mapping):
        raise ModelArtsValidationError(
            f"message_structure must be a dict of protocol -> text, got {type(message_structure).__name__}"
        )
    entries: dict[str, str] = {}
    for key, value in message_structure.items():
        if key not in PROTOCOLS:
            raise ModelArtsValidationError(
                f"message_structure key {key!r:.40} is not an SMN protocol; use one of {sorted(PROTOCOLS)}"
            )
        entries[key] = _require_str(f"message_structure[{key!r}]", value)
    if not entries.get("default", "").strip():
        raise ModelArtsValidationError("message_structure needs a non-empty 'default' entry")
    return entries


def build_publish_body(
    *,
    subject: Any,
    message: Any = None,
    message_structure: Any = None,
    where: str = "the Airflow task log",
) -> dict[str, Any]:
    """The SMN publish body for rendered values, within SMN's limits.

    :param subject: the subject (``None`` or empty: no subject).
    :param message: the message text; exclusive with ``message_structure``.
    :param message_structure: ``{protocol: text}`` with a ``default`` entry; sent as a JSON string.
    :param where: where the full log is, for the note in a cut message.
    :raises ModelArtsValidationError: wrong types, both or neither of the two message forms, bad keys.
    """
    if (message is None) == (message_structure is None):
        raise ModelArtsValidationError("give exactly one of message and message_structure")
    body: dict[str, Any] = {}
    if subject is not None and _require_str("subject", subject).strip():
        body["subject"] = fit_subject(subject)
    if message_structure is not None:
        entries = _check_structure(message_structure)
        body["message_structure"] = _fit_structure(entries, where=where, limit=MESSAGE_LIMIT_BYTES)
    else:
        text = _require_str("message", message)
        if not text.strip():
            raise ModelArtsValidationError("message must not be empty")
        body["message"] = fit_message(text, where=where)
    return body


def full_log_location(context: Mapping[str, Any]) -> str:
    """Where a reader finds the full log: the ModelArts console and the Airflow task log, when known.

    :param context: the Airflow context (with ``modelarts`` when wrapped by ``ModelArtsTaskLogsNotifier``).
    """
    places: list[str] = []
    info = context.get("modelarts")
    if isinstance(info, Mapping) and isinstance(info.get("console_url"), str):
        places.append(f"the ModelArts console {info['console_url']}")
    try:
        log_url = getattr(context.get("ti"), "log_url", None)
    except Exception:
        log_url = None
    if isinstance(log_url, str) and log_url:
        places.append(f"the Airflow task log {log_url}")
    return " or ".join(places) or "the Airflow task log"


class SmnNotifier(BaseNotifier):
    """Publish an alert to a Huawei Cloud SMN topic.

    Use it as ``on_failure_callback`` of a task or a DAG, or wrapped by
    :class:`~airflow_provider_modelarts.notifications.modelarts.ModelArtsTaskLogsNotifier` so its
    templates can use ``{{ modelarts.summary }}``, ``{{ modelarts.log_urls }}`` and the log tails.

    The rendered subject is put on one line and cut to 512 bytes; a message over 256 KB keeps its start
    and end with a note saying where the full log is; an ``sms`` entry is cut to what SMN sends whole.

    :param topic_urn: ``urn:smn:{region}:{project_id}:{topic_name}``. (templated)
    :param subject: the subject (e-mail subject). (templated)
    :param message: the message text; exclusive with ``message_structure``. (templated)
    :param message_structure: ``{protocol: text}`` (``default`` required, e.g. also ``email``, ``sms``,
        ``https``), sent as the JSON string SMN expects. (templated)
    :param modelarts_conn_id: the ``modelarts`` connection: credentials, project, region, and the extra
        ``smn_endpoint`` (default ``https://smn.{region}.myhuaweicloud.com``). (templated)
    """

    template_fields: Sequence[str] = (
        "topic_urn",
        "subject",
        "message",
        "message_structure",
        "modelarts_conn_id",
    )

    def __init__(
        self,
        *,
        topic_urn: str,
        subject: str | None = None,
        message: str | None = None,
        message_structure: dict[str, str] | None = None,
        modelarts_conn_id: str = DEFAULT_CONN_ID,
    ) -> None:
        super().__init__()
        self.topic_urn = topic_urn
        self.subject = subject
        self.message = message
        self.message_structure = message_structure
        self.modelarts_conn_id = modelarts_conn_id

    def get_template_env(self, dag: Any = None) -> jinja2.Environment:
        if dag is not None and not hasattr(dag, "get_template_env"):
            return TemplatableDag(dag).get_template_env()
        return super().get_template_env(dag=dag)

    def __call__(self, *args: Any) -> None:
        if len(args) == 1 and isinstance(args[0], dict):
            make_context_templatable(args[0])  # type: ignore[arg-type]
        super().__call__(*args)

    def get_hook(self) -> ModelArtsHook:
        """The hook whose connection and transport publish the message."""
        return ModelArtsHook(self._conn_id())

    def get_async_hook(self) -> ModelArtsAsyncHook:
        """The async hook used by :meth:`async_notify`."""
        return ModelArtsAsyncHook(self._conn_id())

    def _conn_id(self) -> str:
        return _require_str("modelarts_conn_id", self.modelarts_conn_id)

    def build_body(self, context: Mapping[str, Any]) -> dict[str, Any]:
        """The publish body from the rendered fields; checks the topic URN first (no request is sent).

        :param context: the Airflow context, for the note of a cut message.
        """
        validate_topic_urn(self.topic_urn)
        return build_publish_body(
            subject=self.subject,
            message=self.message,
            message_structure=self.message_structure,
            where=full_log_location(context),
        )

    def notify(self, context: Context) -> None:
        body = self.build_body(context)
        answer = publish_message(self.get_hook(), topic_urn=self.topic_urn, body=body)
        self._log_answer(answer)

    async def async_notify(self, context: Context) -> None:
        """Publish without blocking the event loop (Airflow runs async notifiers in the triggerer)."""
        body = self.build_body(context)
        hook = self.get_async_hook()
        try:
            answer = await apublish_message(hook, topic_urn=self.topic_urn, body=body)
        finally:
            await hook.close()
        self._log_answer(answer)

    def _log_answer(self, answer: Mapping[str, Any]) -> None:
        self.log.info(
            "SMN accepted the alert for topic %s: message_id %s (request %s)",
            self.topic_urn,
            answer.get("message_id"),
            answer.get("request_id"),
        )
