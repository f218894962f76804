"""Link signatures: registered with the masker once per link, never for private links, scrubbed from errors."""

from __future__ import annotations

import os
import traceback
from unittest import mock

import pytest
import requests
import requests_mock as rm
import urllib3

from airflow_provider_modelarts import redaction
from airflow_provider_modelarts.exceptions import ModelArtsTransportError
from airflow_provider_modelarts.hooks.modelarts import ModelArtsHook
from airflow_provider_modelarts.redaction import (
    LinkRegistry,
    mark_link_private,
    mask_signed_url,
    redact_signed_url_secrets,
    scrub_exception_chain,
    signed_url_secrets,
)

BASE = "http://127.0.0.1:18080"
PID = "0123456789abcdef0123456789abcdef"


def link(n: int) -> str:
    return f"https://b.obs.example.com/logs/{n}.log?AccessKeyId=AK&Expires=1&Signature=SiG{n:06d}%2Bx%3D"


@pytest.fixture(autouse=True)
def _fresh_registry():
    redaction.LINKS.clear()
    yield
    redaction.LINKS.clear()


def test_a_link_is_registered_once_however_often_it_is_masked():
    masked: list[str] = []
    assert mask_signed_url(link(1), masked.append) == len(signed_url_secrets(link(1))) > 0
    assert mask_signed_url(link(1), masked.append) == 0
    assert mask_signed_url(link(1)) == 0
    assert sorted(masked) == sorted(signed_url_secrets(link(1)))


def test_private_links_are_never_registered():
    masked: list[str] = []
    mark_link_private(link(2))
    assert mask_signed_url(link(2), masked.append) == 0
    assert masked == []


def test_links_without_secrets_are_not_remembered():
    registry = LinkRegistry()
    assert mask_signed_url("https://b/k?Expires=1", registry=registry) == 0
    assert len(registry) == 0


def test_registry_is_bounded_and_forgets_the_oldest_first():
    registry = LinkRegistry(capacity=3)
    for n in range(5):
        mark_link_private(link(n), registry=registry)
    assert len(registry) == 3
    masked: list[str] = []
    assert mask_signed_url(link(0), masked.append, registry=registry) > 0  # forgotten: registered again
    assert mask_signed_url(link(4), masked.append, registry=registry) == 0
    with pytest.raises(ValueError):
        LinkRegistry(capacity=0)


def test_registry_keeps_no_secret():
    registry = LinkRegistry()
    mark_link_private(link(3), registry=registry)
    state = repr(vars(registry))
    for secret in signed_url_secrets(link(3)):
        assert secret not in state


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_registers_again():
    mark_link_private(link(4))
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        masked: list[str] = []
        mask_signed_url(link(4), masked.append)
        os.write(write, str(len(masked)).encode())
        os._exit(0)
    os.waitpid(pid, 0)
    assert int(os.read(read, 16)) == len(signed_url_secrets(link(4)))


def test_scrub_exception_chain_rewrites_every_link_of_a_chain():
    target = "/logs/1.log?AccessKeyId=AK&Signature=TOPSECRETSIG"
    try:
        try:
            raise urllib3.exceptions.MaxRetryError(None, target, "refused")  # type: ignore[arg-type]
        except urllib3.exceptions.MaxRetryError as inner:
            raise requests.ConnectionError(inner) from inner
    except requests.ConnectionError as err:
        scrub_exception_chain(err, redact_signed_url_secrets)
        text = "".join(traceback.format_exception(err))
    assert "TOPSECRETSIG" not in text
    assert "Signature=***" in text and "AccessKeyId=AK" in text


def test_cyclic_chains_terminate():
    a, b = ValueError("/k?Signature=S1"), ValueError("x")
    a.__context__, b.__context__ = b, a
    scrub_exception_chain(a, redact_signed_url_secrets)
    assert str(a) == "/k?Signature=***"


# ------------------------------------------------------------------------------------------------
# Through the hook
# ------------------------------------------------------------------------------------------------


@pytest.fixture
def conn(monkeypatch):
    monkeypatch.setenv(
        "AIRFLOW_CONN_MODELARTS_DEFAULT",
        '{"conn_type": "modelarts", "login": "AK0000000000000000001", "password": "SK00000000000000000000001",'
        f' "extra": {{"project_id": "{PID}", "endpoint": "{BASE}"}}}}',
    )


def _url_for(n: int) -> str:
    return f"{BASE}/v2/{PID}/training-jobs/job-1/tasks/worker-{n}/logs/url"


def _count_registrations(private: bool, tasks: int) -> list[int]:
    """Masker registrations made while fetching and opening each of ``tasks`` links, per link."""
    per_link = []
    hook = ModelArtsHook(mask_log_links=not private, max_retries=0)
    with rm.Mocker() as mocker, mock.patch.object(redaction, "mask_secret") as mask:
        for n in range(tasks):
            mocker.get(_url_for(n), json={"obs_url": link(n)})
            mocker.get(link(n), content=b"log line\n")
            before = mask.call_count
            url = hook.get_task_log_url("job-1", f"worker-{n}", download=True)
            hook.open_log_stream(url).close()
            per_link.append(mask.call_count - before)
    return per_link


@pytest.mark.usefixtures("conn")
def test_registrations_per_log_stay_flat_and_are_made_once():
    per_link = _count_registrations(private=False, tasks=200)
    first, second = per_link[:100], per_link[100:]
    assert sum(first) == sum(second)
    assert set(per_link) == {len(signed_url_secrets(link(0)))}  # once per link, not once per use


@pytest.mark.usefixtures("conn")
def test_private_hook_registers_nothing():
    assert set(_count_registrations(private=True, tasks=50)) == {0}


@pytest.mark.usefixtures("conn")
def test_transport_error_chains_of_a_private_link_hold_no_signature(caplog):
    url = link(7)
    mark_link_private(url)
    hook = ModelArtsHook(mask_log_links=False, max_retries=0)
    with rm.Mocker() as mocker:
        mocker.get(url, exc=requests.ConnectionError(f"Max retries exceeded with url: {url}"))
        with pytest.raises(ModelArtsTransportError) as info:
            hook.open_log_stream(url)
    text = "".join(traceback.format_exception(info.value))
    assert "ConnectionError" in text
    for secret in signed_url_secrets(url):
        assert secret not in text


def test_archive_operator_workers_keep_links_private():
    from airflow_provider_modelarts.operators.modelarts import ModelArtsArchiveTaskLogsOperator

    op = ModelArtsArchiveTaskLogsOperator(task_id="a", training_job_id="j", destination="file:///tmp/x")
    assert op.new_hook().mask_log_links is False
    assert op.hook.mask_log_links is True
