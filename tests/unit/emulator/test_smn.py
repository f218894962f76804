"""Raw HTTP behaviour of the emulator's SMN publish endpoint: signatures, topic URNs, limits, the message list."""

from __future__ import annotations

import json

import pytest
import requests

from airflow_provider_modelarts.auth import AkSkSigner

pytestmark = pytest.mark.integration


def _publish(emu, topic, body, *, sk=None, raw: bytes | None = None, project=None):
    url = f"{emu.url}/v2/{project or emu.project_id}/notifications/topics/{topic}/publish"
    data = raw if raw is not None else json.dumps(body).encode("utf-8")
    signer = AkSkSigner(emu.ak, sk or emu.sk, project_id=emu.project_id)
    signed = signer.sign("POST", url, headers={"Content-Type": "application/json"}, body=data)
    return requests.post(signed.url, headers=signed.headers, data=signed.body, timeout=10)


def _topic(emu, name="alerts"):
    return f"urn:smn:{emu.region}:{emu.project_id}:{name}"


def _messages(emu):
    resp = requests.get(f"{emu.url}/_emulator/smn/messages", timeout=10)
    assert resp.status_code == 200
    return resp.json()["messages"]


def test_publish_is_kept_and_listed(emulator):
    resp = _publish(emulator, _topic(emulator), {"subject": "s", "message": "hello"})
    assert resp.status_code == 200, resp.text
    answer = resp.json()
    assert set(answer) == {"request_id", "message_id"}
    [message] = _messages(emulator)
    assert message["message_id"] == answer["message_id"]
    assert (message["topic_urn"], message["subject"], message["message"]) == (_topic(emulator), "s", "hello")
    assert message["sms"] == {"parts": 1, "delivered": "hello", "truncated": False}
    assert emulator.smn.messages()[0]["message_id"] == answer["message_id"]
    assert requests.delete(f"{emulator.url}/_emulator/smn/messages", timeout=10).json() == {"messages": []}


def test_message_structure_and_sms_delivery(emulator):
    structure = {"default": "d", "sms": "x" * 1000}
    resp = _publish(emulator, _topic(emulator), {"message_structure": json.dumps(structure)})
    assert resp.status_code == 200, resp.text
    [message] = _messages(emulator)
    assert message["message_structure"] == structure
    assert message["sms"]["parts"] == 3 and message["sms"]["truncated"] is True
    assert len(message["sms"]["delivered"]) == 918


def test_wrong_signature_is_refused_like_the_modelarts_api(emulator):
    resp = _publish(
        emulator, _topic(emulator), {"message": "m"}, sk="wrong-secret-key-0000000000000000000000"
    )
    assert resp.status_code == 401
    assert resp.json()["error_code"] == "APIG.0301"
    assert _messages(emulator) == []


def test_unsigned_publish_is_refused(emulator):
    url = f"{emulator.url}/v2/{emulator.project_id}/notifications/topics/{_topic(emulator)}/publish"
    assert requests.post(url, json={"message": "m"}, timeout=10).status_code == 401


@pytest.mark.parametrize(
    ("topic", "status", "code"),
    [
        ("urn:smn:cn-north-4:{pid}:", 400, "SMN.0005"),
        ("urn:smn:cn-north-4:{pid}:bad name", 400, "SMN.0005"),
        ("arn:aws:sns:us-east-1:123:x", 400, "SMN.0005"),
        ("urn:smn:cn-north-4:ffffffff:alerts", 404, "SMN.0006"),
        ("urn:smn:eu-west-101:{pid}:alerts", 404, "SMN.0006"),
    ],
)
def test_topic_urn_is_checked(emulator, topic, status, code):
    resp = _publish(emulator, topic.format(pid=emulator.project_id), {"message": "m"})
    assert resp.status_code == status
    doc = resp.json()
    assert doc["code"] == code and doc["request_id"]


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"subject": "é" * 257, "message": "m"}, "SMN.0024"),
        ({"message": "x" * (256 * 1024 + 1)}, "SMN.0024"),
        ({"message_structure": json.dumps({"default": "x" * (256 * 1024)})}, "SMN.0024"),
        ({"subject": "only"}, "SMN.0024"),
        ({"message_structure": {"default": "not a string"}}, "SMN.0021"),
        ({"message_structure": json.dumps({"email": "no default"})}, "SMN.0021"),
        ({"message_structure": json.dumps({"default": "d", "pigeon": "x"})}, "SMN.0021"),
        ({"message_template_name": "t"}, "SMN.0032"),
    ],
)
def test_body_and_limits_are_checked(emulator, body, code):
    resp = _publish(emulator, _topic(emulator), body)
    assert resp.status_code == 400
    assert resp.json()["code"] == code
    assert _messages(emulator) == []


def test_limits_are_inclusive(emulator):
    body = {"subject": "é" * 256, "message": "x" * (256 * 1024)}
    assert _publish(emulator, _topic(emulator), body).status_code == 200


def test_body_that_is_not_json_is_refused(emulator):
    resp = _publish(emulator, _topic(emulator), None, raw=b"\xff\xfe not json")
    assert resp.status_code == 400 and resp.json()["code"] == "SMN.0024"


def test_fault_knobs_apply_to_publish(emulator):
    emulator.knobs.error_burst = 1
    assert _publish(emulator, _topic(emulator), {"message": "m"}).status_code >= 500
    assert _publish(emulator, _topic(emulator), {"message": "m"}).status_code == 200


def test_connection_json_points_smn_at_the_emulator(emulator):
    assert json.loads(emulator.connection_json())["extra"]["smn_endpoint"] == emulator.url
