"""The emulator's Simple Message Notification (SMN) side: ``POST .../notifications/topics/{urn}/publish``.

It checks a publish the way SMN does (topic URN, body fields, sizes), keeps every accepted message and
shows what an SMS subscriber would receive. It imports nothing from the provider's hooks or notifiers:
it is the other side of the wire. Authentication is the server's (same AK/SK and token checks).
"""

from __future__ import annotations

import json
import math
import re
import threading
import time
import uuid
from typing import Any

__all__ = [
    "MESSAGE_LIMIT",
    "SMS_PARTS_SENT",
    "SUBJECT_LIMIT",
    "SmnEmulator",
    "SmnRejection",
]

SUBJECT_LIMIT = 512
MESSAGE_LIMIT = 256 * 1024
SMS_PART_ASCII = 459
SMS_PART_OTHER = 201
SMS_PARTS_SENT = 2
_DELIVERY_PROTOCOLS = ("email", "sms", "http", "https")
_APP_PROTOCOLS = ("functionstage", "functiongraph", "dingding", "wechat", "feishu", "welink")
_PROTOCOLS = frozenset(("default", *_DELIVERY_PROTOCOLS, *_APP_PROTOCOLS))
_TOPIC_URN = re.compile(
    r"urn:smn:(?P<region>[a-z0-9-]+):(?P<project>[A-Za-z0-9]{1,64}):(?P<name>[A-Za-z0-9][A-Za-z0-9_-]{0,254})"
)
# Codes and messages from SMN's error-code table; SMN.0024 ("content is invalid") stands for the
# body problems the table gives no code of its own (missing message, sizes).
_URN_INVALID = (400, "SMN.0005", "Parameter: TopicUrn is invalid.")
_TOPIC_NOT_FOUND = (404, "SMN.0006", "Topic not found.")
_STRUCTURE_INVALID = (400, "SMN.0021", "MessageStructure is invalid.")
_TEMPLATE_INVALID = (400, "SMN.0032", "Parameter: message_template_name is invalid.")


class SmnRejection(Exception):
    """An SMN error answer: ``{"request_id", "code", "message"}`` with ``status``."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def _content_invalid(detail: str) -> SmnRejection:
    return SmnRejection(400, "SMN.0024", f"Parameter: content is invalid. {detail}")


def _sms_delivery(text: str) -> dict[str, Any]:
    """What an SMS subscriber receives: SMN splits the text and sends only the first parts."""
    per_part = SMS_PART_ASCII if text.isascii() else SMS_PART_OTHER
    parts = max(1, math.ceil(len(text) / per_part))
    return {
        "parts": parts,
        "delivered": text[: per_part * SMS_PARTS_SENT],
        "truncated": parts > SMS_PARTS_SENT,
    }


def _parse_structure(value: Any) -> dict[str, str]:
    if not isinstance(value, str):
        raise SmnRejection(*_STRUCTURE_INVALID)
    try:
        doc = json.loads(value)
    except ValueError:
        raise SmnRejection(*_STRUCTURE_INVALID) from None
    if (
        not isinstance(doc, dict)
        or not isinstance(doc.get("default"), str)
        or not doc["default"]
        or any(k not in _PROTOCOLS or not isinstance(v, str) for k, v in doc.items())
    ):
        raise SmnRejection(*_STRUCTURE_INVALID)
    return doc


class SmnEmulator:
    """Topics of one project and region: every well-formed topic URN of them exists.

    :param project_id: the emulator's project id.
    :param region: the emulator's region.
    """

    def __init__(self, *, project_id: str, region: str) -> None:
        self.project_id = project_id
        self.region = region
        self._lock = threading.Lock()
        self._messages: list[dict[str, Any]] = []

    @staticmethod
    def route(method: str, segments: list[str]) -> str | None:
        """``publish``, ``messages`` (read), ``clear``, or None when the request is not for SMN."""
        if segments == ["_emulator", "smn", "messages"]:
            return {"GET": "messages", "DELETE": "clear"}.get(method)
        if (
            method == "POST"
            and len(segments) == 6
            and segments[0] == "v2"
            and segments[2:4] == ["notifications", "topics"]
            and segments[5] == "publish"
        ):
            return "publish"
        return None

    def messages(self) -> list[dict[str, Any]]:
        """Copies of the accepted messages, oldest first."""
        with self._lock:
            return [dict(m) for m in self._messages]

    def clear(self) -> None:
        """Forget the accepted messages."""
        with self._lock:
            self._messages.clear()

    def publish(self, *, project_id: str, topic_urn: str, body: bytes, request_id: str) -> dict[str, Any]:
        """Check and keep one publish; return SMN's 200 answer ``{"request_id", "message_id"}``.

        :param project_id: the project id of the request path.
        :param topic_urn: the topic URN of the request path (percent-decoded).
        :param body: the raw request body.
        :param request_id: the request id of the answer.
        :raises SmnRejection: what SMN would answer instead.
        """
        match = _TOPIC_URN.fullmatch(topic_urn)
        if match is None:
            raise SmnRejection(*_URN_INVALID)
        if (
            project_id != self.project_id
            or match["project"] != self.project_id
            or match["region"] != self.region
        ):
            raise SmnRejection(*_TOPIC_NOT_FOUND)
        record = self._check_body(body)
        record.update(
            message_id=uuid.uuid4().hex,
            request_id=request_id,
            topic_urn=topic_urn,
            published_at=time.time(),
        )
        with self._lock:
            self._messages.append(record)
        return {"request_id": request_id, "message_id": record["message_id"]}

    @staticmethod
    def _check_body(body: bytes) -> dict[str, Any]:
        try:
            doc = json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise _content_invalid("The body is not a UTF-8 JSON object.") from None
        if not isinstance(doc, dict):
            raise _content_invalid("The body is not a JSON object.")
        subject = doc.get("subject")
        if subject is not None and (
            not isinstance(subject, str) or len(subject.encode("utf-8")) > SUBJECT_LIMIT
        ):
            raise _content_invalid(f"subject must be a string of at most {SUBJECT_LIMIT} bytes.")
        structure = doc.get("message_structure")
        message = doc.get("message")
        if structure is not None:
            text = structure if isinstance(structure, str) else ""
            entries = _parse_structure(structure)
        elif doc.get("message_template_name") is not None:
            raise SmnRejection(*_TEMPLATE_INVALID)
        elif isinstance(message, str) and message:
            text, entries = message, {"default": message}
        else:
            raise _content_invalid("One of message, message_structure or message_template_name is required.")
        if len(text.encode("utf-8")) > MESSAGE_LIMIT:
            raise _content_invalid(f"The message is longer than {MESSAGE_LIMIT} bytes.")
        return {
            "subject": subject,
            "message": message if structure is None else None,
            "message_structure": entries if structure is not None else None,
            "sms": _sms_delivery(entries.get("sms", entries["default"])),
        }
