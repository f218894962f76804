"""The emulator's ModelArts API routes (jobs, tasks, events, log links, preview, actions) and SMN publish."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from airflow_provider_modelarts.emulator.http import EmulatorHandler, Reject
from airflow_provider_modelarts.emulator.iam import IdentityService
from airflow_provider_modelarts.emulator.jobs import job_body
from airflow_provider_modelarts.emulator.live import list_events
from airflow_provider_modelarts.emulator.obs import ObsLinks
from airflow_provider_modelarts.emulator.ratelimit import THROTTLE_CODE, RateLimiter, credential_of
from airflow_provider_modelarts.emulator.scenario import TERMINAL, EmulatedJob, EmulatedTask
from airflow_provider_modelarts.emulator.searches import SearchRejected, search_training_jobs, visible
from airflow_provider_modelarts.emulator.smn import SmnEmulator, SmnRejection
from airflow_provider_modelarts.emulator.state import EmulatorContext

__all__ = ["PREVIEW_LIMIT", "ApiRequest", "ModelArtsApi", "no_such_api", "preview_body"]

PREVIEW_LIMIT = 5 * 1024 * 1024
_LOG_TYPES = ("text/plain", "application/octet-stream")


def no_such_api() -> Reject:
    """The gateway's answer to a path it does not know."""
    return Reject(
        404, "APIG.0101", "The API does not exist or has not been published in the environment", apig=True
    )


@dataclass(frozen=True)
class ApiRequest:
    """One signed request to the ModelArts or SMN API.

    :param method: the HTTP method.
    :param target: the request target (path and query, as sent).
    :param segments: the decoded path segments.
    :param headers: request headers with lower-case names.
    :param body: the request body.
    :param query: the query pairs.
    """

    method: str
    target: str
    segments: list[str]
    headers: dict[str, str]
    body: bytes
    query: list[tuple[str, str]]


def _route(method: str, rest: list[str]) -> str | None:
    if rest == ["training-job-searches"] and method == "POST":
        return "search"
    if len(rest) < 2 or rest[0] != "training-jobs":
        return None
    tail = rest[2:]
    simple = {(): ("GET", "DELETE"), ("tasks",): ("GET",), ("actions",): ("POST",), ("events",): ("GET",)}
    if tuple(tail) in simple and method in simple[tuple(tail)]:
        return tail[0] if tail else "job"
    if len(tail) == 4 and tail[0] == "tasks" and tail[2] == "logs" and method == "GET":
        return {"url": "log_url", "preview": "preview"}.get(tail[3])
    return None


def _content_type(headers: dict[str, str], query: list[tuple[str, str]]) -> str:
    header_type = headers.get("content-type", "").split(";")[0].strip().lower()
    query_type = next((v for k, v in query if k == "Content-Type"), None)
    if header_type in _LOG_TYPES:
        return header_type
    if query_type is None:
        return "text/plain"
    content_type = query_type.split(";")[0].strip().lower()
    if content_type not in _LOG_TYPES:
        raise Reject(
            400,
            "ModelArts.0101",
            "Invalid Argument: Content-Type must be text/plain or application/octet-stream",
        )
    return content_type


def preview_body(job: EmulatedJob, task: EmulatedTask, now: float) -> dict[str, Any]:
    """The ``/logs/preview`` answer: the last :data:`PREVIEW_LIMIT` bytes of the log as it is at ``now``.

    :param job: the emulated job.
    :param task: one of its tasks.
    :param now: the emulator's clock (unix seconds).
    """
    size = job.log_size_at(task, now)
    data = task.log.read(max(0, size - PREVIEW_LIMIT), size)
    return {"content": data.decode("utf-8", errors="replace"), "current_size": len(data), "full_size": size}


class ModelArtsApi:
    """Answers the ModelArts training-job API and SMN publish for one project.

    :param context: the emulator's shared state.
    :param identity: checks credentials.
    :param obs: signs log links.
    :param smn: the SMN emulator.
    :param rate_limiter: the gateway's per-credential limit, or None.
    """

    def __init__(
        self,
        context: EmulatorContext,
        *,
        identity: IdentityService,
        obs: ObsLinks,
        smn: SmnEmulator,
        rate_limiter: RateLimiter | None,
    ) -> None:
        self._ctx = context
        self._identity = identity
        self._obs = obs
        self._smn = smn
        self._rate_limiter = rate_limiter
        self._lock = threading.Lock()
        self._throttle_credit = 0.0

    # ----------------------------------------------------------------- gate

    def _authenticate(self, request: ApiRequest) -> None:
        if self._ctx.knobs.latency > 0:
            time.sleep(self._ctx.knobs.latency)
        try:
            self._identity.authenticate(request.method, request.target, request.headers, request.body)
        except Reject:
            self._ctx.counters.add("rejected_auth")
            raise

    def _faults(self) -> tuple[int, str, str, bool] | None:
        with self._lock:
            ratio = min(max(self._ctx.knobs.throttle_ratio, 0.0), 1.0)
            if ratio > 0:
                self._throttle_credit += ratio
                if self._throttle_credit >= 1.0 - 1e-9:
                    self._throttle_credit -= 1.0
                    self._ctx.counters.add("throttled")
                    msg = "The throttling threshold has been reached: policy user over ratelimit,limit:100,time:1 minute"
                    return 429, "APIG.0308", msg, True
            if self._ctx.knobs.error_burst > 0:
                self._ctx.knobs.error_burst -= 1
                self._ctx.counters.add("server_error")
                status = self._ctx.knobs.error_status
                if status == 500:
                    return 500, "ModelArts.0010", "Internal error.", False
                return status, "APIG.0203", "Backend timeout", True
        return None

    def _gate(self, handler: EmulatorHandler, request: ApiRequest) -> bool:
        """Latency, authentication, rate limit and injected faults; False when an answer was sent."""
        self._authenticate(request)
        limiter = self._rate_limiter
        if limiter is not None and not limiter.allow(
            credential_of(request.headers, token_user=self._identity.identity.iam_user)
        ):
            self._ctx.counters.add("throttled")
            handler.send_error_json(429, THROTTLE_CODE, limiter.limit.message(), apig=True)
            return False
        fault = self._faults()
        if fault is None:
            return True
        status, code, msg, apig = fault
        extra = {}
        if status == 429 and self._ctx.knobs.retry_after is not None:
            extra["Retry-After"] = f"{self._ctx.knobs.retry_after:g}"
        handler.send_error_json(status, code, msg, apig=apig, extra_headers=extra)
        return False

    # ----------------------------------------------------------------- ModelArts

    def handle(self, handler: EmulatorHandler, request: ApiRequest) -> None:
        """Answer a ``/v2/{project_id}/...`` request."""
        project_id, rest = request.segments[1], request.segments[2:]
        kind = _route(request.method, rest)
        if kind is None:
            self._ctx.counters.add("not_found")
            raise no_such_api()
        self._ctx.counters.add(kind)
        if project_id != self._identity.identity.project_id:
            self._ctx.counters.add("outside_project")
        if not self._gate(handler, request):
            return
        if project_id != self._identity.identity.project_id:
            raise Reject(403, "ModelArts.0210", "The project id in the request URL does not match the token.")
        if kind == "search":
            handler.send_json(200, self._search(request.body))
            return
        job = self._get_job(rest[1])
        status, doc = self._answer(kind, job, rest, request)
        handler.send_json(status, doc)

    def _answer(self, kind: str, job: EmulatedJob, rest: list[str], request: ApiRequest) -> tuple[int, Any]:
        if kind == "job" and request.method == "DELETE":
            self._ctx.jobs.remove(job.id)
            return 202, {}
        if kind == "job":
            return 200, job_body(job, self._ctx.clock())
        if kind == "tasks":
            return 200, [
                {"task": t.id, "ip": t.ip, "host_ip": "10.0.0.1", "schedule_count": 1} for t in job.tasks
            ]
        if kind == "actions":
            return 200, self._action(job, request.body)
        if kind == "events":
            try:
                return 200, list_events(job, self._ctx.clock(), request.query)
            except ValueError as err:
                raise Reject(400, "ModelArts.2788", str(err)) from None
        if kind == "log_url":
            return 200, self._log_url(job, rest[3], request)
        return 200, preview_body(job, self._get_task(job, rest[3]), self._ctx.clock())

    def _get_job(self, job_id: str) -> EmulatedJob:
        job = self._ctx.jobs.get(job_id)
        if job is None or not visible(job, self._ctx.clock()):
            raise Reject(404, "ModelArts.2775", f"Training job (ID: {job_id}) not found.")
        return job

    @staticmethod
    def _get_task(job: EmulatedJob, task_id: str) -> EmulatedTask:
        task = job.task(task_id)
        if task is None:
            raise Reject(
                400,
                "ModelArts.2788",
                f"InvalidParam(task_id): task {task_id} is not in training job {job.id}.",
            )
        return task

    def _search(self, body: bytes) -> dict[str, Any]:
        try:
            return search_training_jobs(body, self._ctx.jobs.all(), now=self._ctx.clock(), job_body=job_body)
        except SearchRejected as err:
            raise Reject(err.status, err.error_code, err.error_msg) from None

    def _log_url(self, job: EmulatedJob, task_id: str, request: ApiRequest) -> dict[str, str]:
        if self._ctx.knobs.refuse_log_url:
            raise Reject(
                403,
                "ModelArts.0108",
                "You are not authorized to perform the (modelarts:trainJob:logExport) operation.",
            )
        task = self._get_task(job, task_id)
        content_type = _content_type(request.headers, request.query)
        return {
            "obs_url": self._obs.sign(job.id, task.id, download=content_type == "application/octet-stream")
        }

    def _action(self, job: EmulatedJob, body: bytes) -> dict[str, Any]:
        try:
            doc = json.loads(body or b"{}")
        except ValueError:
            raise Reject(400, "ModelArts.2787", "InvalidJsonBody") from None
        if not isinstance(doc, dict) or doc.get("action_type") != "terminate":
            raise Reject(400, "ModelArts.2788", "InvalidParam(action_type): only terminate is supported")
        with job.lock:
            now = self._ctx.clock()
            if job.phase_at(now) in TERMINAL:
                raise Reject(
                    409,
                    "ModelArts.2796",
                    f"NotAllowedToTerminate: training job {job.id} is already {job.phase_at(now)}.",
                )
            job.terminate(now)
        return job_body(job, self._ctx.clock())

    # ----------------------------------------------------------------- SMN

    def handle_smn(self, handler: EmulatorHandler, kind: str, request: ApiRequest) -> None:
        """SMN publish (signed like the ModelArts API) and the unauthenticated message list."""
        self._ctx.counters.add(f"smn_{kind}")
        if kind != "publish":
            if kind == "clear":
                self._smn.clear()
            handler.send_json(200, {"messages": self._smn.messages()})
            return
        self._authenticate(request)
        fault = self._faults()
        if fault is not None:
            handler.send_error_json(fault[0], fault[1], fault[2], apig=fault[3])
            return
        segments = [unquote(s) for s in request.target.partition("?")[0].split("/")[1:]]
        try:
            answer = self._smn.publish(
                project_id=segments[1],
                topic_urn=segments[4],
                body=request.body,
                request_id=handler.request_id,
            )
        except SmnRejection as rej:
            handler.send_json(
                rej.status, {"request_id": handler.request_id, "code": rej.code, "message": rej.message}
            )
            return
        handler.send_json(200, answer)
