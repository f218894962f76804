"""Fidelity check: the official Huawei Cloud ModelArts SDK talks to the emulator as to the real service.

The SDK's signer is the independent judge of the emulator's AK/SK verifier.
"""

from __future__ import annotations

import hashlib

import pytest
import requests

pytest.importorskip("huaweicloudsdkmodelarts")

from huaweicloudsdkcore.auth.credentials import BasicCredentials
from huaweicloudsdkcore.exceptions import exceptions
from huaweicloudsdkmodelarts.v1 import (
    Filter,
    JobActionType,
    JobSearches,
    ListTrainingJobsRequest,
    ListTrainingJobTasksRequest,
    ModelArtsClient,
    ShowTrainingJobDetailsRequest,
    ShowTrainingJobLogsPreviewRequest,
    StopTrainingJobRequest,
)

from airflow_provider_modelarts.emulator import DEFAULT_AK, DEFAULT_PROJECT_ID, DEFAULT_SK

pytestmark = pytest.mark.integration

LOG_URL_PATH = "/v2/{project_id}/training-jobs/{training_job_id}/tasks/{task_id}/logs/url"
ODD_JOB_ID = "job a~b*c(1)"

SCENARIO = {
    "jobs": [
        {
            "id": "sdk-done",
            "name": "sdk-done",
            "timeline": [
                {"phase": "Pending", "at": 0},
                {"phase": "Running", "at": 0},
                {"phase": "Completed", "at": 0},
            ],
            "tasks": [
                {
                    "id": "worker-0",
                    "exit_code": 0,
                    "log": {"generate": {"size": 3 * 1024 * 1024 + 11, "seed": 5}},
                },
                {"id": "worker-1", "exit_code": 0, "log": {"text": "hello from worker-1\n"}},
            ],
        },
        {
            "id": "sdk-failed",
            "name": "sdk-failed",
            "timeline": [{"phase": "Failed", "at": 0}],
            "tasks": [{"id": "worker-0", "exit_code": 2, "message": "OOM", "log": "boom\n"}],
        },
        {
            "id": "sdk-running",
            "name": "sdk-running",
            "timeline": [{"phase": "Running", "at": 0}, {"phase": "Completed", "at": 600}],
            "tasks": [{"id": "worker-0", "log": {"generate": {"size": 10000}}}],
        },
        {"id": ODD_JOB_ID, "name": "odd", "tasks": [{"id": "worker-0", "log": "odd\n"}]},
    ]
}


def _client(
    url: str, ak: str = DEFAULT_AK, sk: str = DEFAULT_SK, token: str | None = None
) -> ModelArtsClient:
    creds = BasicCredentials(ak, sk, DEFAULT_PROJECT_ID)
    if token is not None:
        creds = creds.with_security_token(token)
    return ModelArtsClient.new_builder().with_credentials(creds).with_endpoint(url).build()


@pytest.fixture
def emu(emulator_factory):
    return emulator_factory(
        SCENARIO, temporary_credentials=("TEMPAK0000000000001", "TempSecret000000000001", "STS-TOKEN-1")
    )


@pytest.fixture
def client(emu):
    return _client(emu.url)


def test_show_training_job_details(client, emu):
    job = client.show_training_job_details(ShowTrainingJobDetailsRequest(training_job_id="sdk-failed"))
    assert job.metadata.id == "sdk-failed"
    assert job.status.phase == "Failed"
    assert job.status.tasks == ["worker-0"]
    assert job.status.task_statuses[0].exit_code == 2
    assert job.status.task_statuses[0].message == "OOM"
    running = client.show_training_job_details(ShowTrainingJobDetailsRequest(training_job_id="sdk-running"))
    assert running.status.phase == "Running"
    assert running.status.start_time > 0
    assert running.spec.resource.node_count == 1
    assert emu.counters["job"] == 2
    assert emu.counters["rejected_auth"] == 0


def test_odd_job_id_is_signed_and_verified(client):
    job = client.show_training_job_details(ShowTrainingJobDetailsRequest(training_job_id=ODD_JOB_ID))
    assert job.metadata.id == ODD_JOB_ID


def test_list_training_jobs(client):
    everything = client.list_training_jobs(ListTrainingJobsRequest(body=JobSearches(limit=50)))
    assert everything.total == 4
    done = client.list_training_jobs(
        ListTrainingJobsRequest(
            body=JobSearches(
                limit=1, offset=0, filters=[Filter(key="phase", operator="in", value=["Completed"])]
            )
        )
    )
    assert done.total == 2 and done.count == 1
    second = client.list_training_jobs(
        ListTrainingJobsRequest(
            body=JobSearches(
                limit=1, offset=1, filters=[Filter(key="phase", operator="in", value=["Completed"])]
            )
        )
    )
    assert {done.items[0].metadata.id, second.items[0].metadata.id} == {"sdk-done", ODD_JOB_ID}
    assert second.items[0].status.phase == "Completed"


def test_show_training_job_logs_preview(client, emu):
    preview = client.show_training_job_logs_preview(
        ShowTrainingJobLogsPreviewRequest(training_job_id="sdk-done", task_id="worker-1")
    )
    assert preview.content == "hello from worker-1\n"
    assert preview.current_size == preview.full_size == 20
    big = client.show_training_job_logs_preview(
        ShowTrainingJobLogsPreviewRequest(training_job_id="sdk-done", task_id="worker-0")
    )
    assert big.full_size == emu.log_size("sdk-done", "worker-0")
    assert big.current_size == big.full_size


@pytest.mark.parametrize("download", [False, True])
def test_log_url_then_download(client, emu, download):
    kwargs = (
        {
            "query_params": [("Content-Type", "application/octet-stream")],
            "header_params": {"Content-Type": "application/json"},
        }
        if download
        else {"header_params": {"Content-Type": "text/plain"}}
    )
    result = client.call_api(
        resource_path=LOG_URL_PATH,
        method="GET",
        path_params={"training_job_id": "sdk-done", "task_id": "worker-0"},
        response_type="TaskLogExportPath",
        **kwargs,
    )
    assert result.obs_url.startswith(emu.url)
    resp = requests.get(result.obs_url, timeout=30)
    assert resp.status_code == 200
    assert hashlib.sha256(resp.content).hexdigest() == emu.log_sha256("sdk-done", "worker-0")
    assert ("attachment" in resp.headers.get("Content-Disposition", "")) is download


def test_tasks_and_stop(client):
    tasks = client.list_training_job_tasks(ListTrainingJobTasksRequest(training_job_id="sdk-done"))
    assert [t.task for t in tasks.body] == ["worker-0", "worker-1"]
    stopped = client.stop_training_job(
        StopTrainingJobRequest(training_job_id="sdk-running", body=JobActionType(action_type="terminate"))
    )
    assert stopped.status.phase == "Terminated"


def test_wrong_sk_rejected(emu):
    bad = _client(emu.url, sk="not-the-secret")
    with pytest.raises(exceptions.ClientRequestException) as err:
        bad.show_training_job_details(ShowTrainingJobDetailsRequest(training_job_id="sdk-done"))
    assert err.value.status_code == 401
    assert err.value.error_code == "APIG.0301"
    assert "verify aksk signature fail" in err.value.error_msg
    assert err.value.request_id
    assert emu.counters["rejected_auth"] == 1


def test_unknown_job_is_not_found(client):
    with pytest.raises(exceptions.ClientRequestException) as err:
        client.show_training_job_details(ShowTrainingJobDetailsRequest(training_job_id="missing"))
    assert err.value.status_code == 404
    assert err.value.error_code == "ModelArts.2775"
    assert err.value.request_id


def test_temporary_credentials(emu):
    temp = _client(emu.url, ak="TEMPAK0000000000001", sk="TempSecret000000000001", token="STS-TOKEN-1")
    job = temp.show_training_job_details(ShowTrainingJobDetailsRequest(training_job_id="sdk-done"))
    assert job.status.phase == "Completed"
    wrong_token = _client(emu.url, ak="TEMPAK0000000000001", sk="TempSecret000000000001", token="STS-TOKEN-2")
    with pytest.raises(exceptions.ClientRequestException) as err:
        wrong_token.show_training_job_details(ShowTrainingJobDetailsRequest(training_job_id="sdk-done"))
    assert err.value.status_code == 401 and err.value.error_code == "APIG.0301"
    no_token = _client(emu.url, ak="TEMPAK0000000000001", sk="TempSecret000000000001")
    with pytest.raises(exceptions.ClientRequestException):
        no_token.show_training_job_details(ShowTrainingJobDetailsRequest(training_job_id="sdk-done"))


def test_throttling_reaches_the_sdk_as_429(client, emu):
    emu.knobs.throttle_ratio = 1.0
    with pytest.raises(exceptions.ClientRequestException) as err:
        client.show_training_job_details(ShowTrainingJobDetailsRequest(training_job_id="sdk-done"))
    # The SDK's urllib3 retry treats 429 as retryable and, once out of retries, reports the status as the code.
    assert err.value.status_code == 429
    assert err.value.error_code == "429"
    assert emu.counters["throttled"] >= 1
