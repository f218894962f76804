"""The emulator's OBS side: signing log links and serving the log objects behind them."""

from __future__ import annotations

import hmac
import secrets
import threading
from dataclasses import dataclass
from urllib.parse import quote, urlencode

from airflow_provider_modelarts.emulator.http import EmulatorHandler, parse_range
from airflow_provider_modelarts.emulator.scenario import EmulatedJob, EmulatedTask
from airflow_provider_modelarts.emulator.signing import obs_signature, obs_string_to_sign
from airflow_provider_modelarts.emulator.state import EmulatorContext

__all__ = ["OBS_ACCESS_KEY", "OBS_BUCKET", "ObsLinks", "ObsRequest"]

OBS_BUCKET = "modelarts-emulator-logs"
OBS_ACCESS_KEY = "EMULATOROBSAK0000001"
_DISPOSITION = "response-content-disposition"


def _obs_path(job_id: str, task_id: str) -> str:
    jid = quote(job_id, safe="")
    return f"/{OBS_BUCKET}/{jid}/{quote(f'modelarts-job-{job_id}-{task_id}.log', safe='')}"


def _obs_resource(path: str, sub_resources: list[tuple[str, str]]) -> str:
    subs = sorted((k, v) for k, v in sub_resources if k.startswith("response-"))
    if not subs:
        return path
    return path + "?" + "&".join(f"{k}={v}" for k, v in subs)


@dataclass(frozen=True)
class ObsRequest:
    """One GET or HEAD of a log object.

    :param method: ``GET`` or ``HEAD``.
    :param raw_path: the path as sent (still percent-encoded).
    :param query: the query pairs.
    :param segments: the decoded path segments.
    :param headers: request headers with lower-case names.
    """

    method: str
    raw_path: str
    query: list[tuple[str, str]]
    segments: list[str]
    headers: dict[str, str]

    @property
    def sub_resources(self) -> list[tuple[str, str]]:
        """The signed ``response-*`` query parameters."""
        return [(k, v) for k, v in self.query if k.startswith("response-")]


class ObsLinks:
    """Signs OBS links to task logs and serves the objects they point at.

    :param context: the emulator's shared state.
    """

    access_key = OBS_ACCESS_KEY

    def __init__(self, context: EmulatorContext) -> None:
        self._ctx = context
        self._secret = secrets.token_urlsafe(30)
        self._lock = threading.Lock()

    def sign(self, job_id: str, task_id: str, *, download: bool = False, ttl: float | None = None) -> str:
        """A signed link to a task log (see :meth:`ModelArtsEmulator.sign_log_url`)."""
        path = _obs_path(job_id, task_id)
        expires = int(self._ctx.clock() + (self._ctx.knobs.link_ttl if ttl is None else ttl))
        sub_resources: list[tuple[str, str]] = []
        if download:
            sub_resources.append(
                (_DISPOSITION, f'attachment; filename="modelarts-job-{job_id}-{task_id}.log"')
            )
        signature = obs_signature(
            self._secret, obs_string_to_sign("GET", expires, _obs_resource(path, sub_resources))
        )
        params = [
            ("AccessKeyId", self.access_key),
            ("Expires", str(expires)),
            ("Signature", signature),
            *sub_resources,
        ]
        return f"{self._ctx.base_url()}{path}?{urlencode(params, quote_via=quote, safe='')}"

    def serve(self, handler: EmulatorHandler, request: ObsRequest) -> None:
        """Answer a GET or HEAD of a log object: check the link, then send the (ranged) bytes."""
        if not self._signed(request):
            self._ctx.counters.add("rejected_auth")
            handler.send_obs_error(
                403,
                "SignatureDoesNotMatch",
                "The request signature we calculated does not match the signature you provided.",
            )
            return
        if self._ctx.clock() >= int(dict(request.query)["Expires"]):
            handler.send_obs_error(403, "RequestTimeTooSkewed", "Request has expired.")
            return
        location = self._location(request.segments)
        if location is None:
            handler.send_obs_error(404, "NoSuchKey", "The specified key does not exist.")
            return
        job, task = location
        size = job.log_size_at(task, self._ctx.clock())
        span = self._span(request, size)
        if span is None:
            handler.send_obs_error(
                416,
                "InvalidRange",
                "The requested range cannot be satisfied.",
                {"Content-Range": f"bytes */{size}"},
            )
            return
        status, start, end = span
        handler.send_response(status)
        for name, value in self._reply_headers(handler, request, (job, task), span, size).items():
            handler.send_header(name, value)
        handler.end_headers()
        if request.method != "HEAD":
            handler.stream(task.log, start, end, self._drop_limit(end - start))

    def _signed(self, request: ObsRequest) -> bool:
        params = dict(request.query)
        access_key = params.get("AccessKeyId") or params.get("AWSAccessKeyId")
        expires = params.get("Expires", "")
        signature = params.get("Signature", "")
        resource = _obs_resource(request.raw_path, request.sub_resources)
        verb = request.method if request.method != "HEAD" else "GET"
        expected = obs_signature(self._secret, obs_string_to_sign(verb, expires, resource))
        return (
            access_key == self.access_key
            and expires.isdigit()
            and hmac.compare_digest(expected.encode(), signature.encode())
        )

    def _span(self, request: ObsRequest, size: int) -> tuple[int, int, int] | None:
        """``(status, start, end)`` to send, or None for an unsatisfiable range (416)."""
        range_header = request.headers.get("range")
        if not range_header or self._ctx.knobs.ignore_range:
            return 200, 0, size
        parsed = parse_range(range_header, size)
        if parsed == "unsatisfiable":
            return (200, 0, size) if self._ctx.knobs.invalid_range_whole_object else None
        if isinstance(parsed, tuple):
            return 206, parsed[0], parsed[1]
        return 200, 0, size

    @staticmethod
    def _reply_headers(
        handler: EmulatorHandler,
        request: ObsRequest,
        location: tuple[EmulatedJob, EmulatedTask],
        span: tuple[int, int, int],
        size: int,
    ) -> dict[str, str]:
        (job, task), (status, start, end) = location, span
        download = any(k == _DISPOSITION for k, _ in request.sub_resources)
        headers = {
            "Content-Type": "application/octet-stream" if download else "text/plain; charset=utf-8",
            "Content-Length": str(end - start),
            "Accept-Ranges": "bytes",
            "ETag": f'"{job.id}-{task.id}-{size}"',
            "x-obs-request-id": handler.request_id,
        }
        if download:
            headers["Content-Disposition"] = dict(request.sub_resources)[_DISPOSITION]
        if status == 206:
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
        return headers

    def _drop_limit(self, length: int) -> int | None:
        """How many bytes to send before cutting the connection, or None to send all."""
        with self._lock:
            cut = self._ctx.knobs.drop_after_bytes
            # Only a download that is longer than the cut uses up a drop, so each counted drop is real.
            if cut is None or self._ctx.knobs.drop_downloads <= 0 or max(0, int(cut)) >= length:
                return None
            self._ctx.knobs.drop_downloads -= 1
            self._ctx.counters.add("dropped")
            return max(0, int(cut))

    def _location(self, segments: list[str]) -> tuple[EmulatedJob, EmulatedTask] | None:
        if len(segments) != 3:
            return None
        job = self._ctx.jobs.get(segments[1])
        prefix = f"modelarts-job-{segments[1]}-"
        if job is None or not segments[2].startswith(prefix) or not segments[2].endswith(".log"):
            return None
        task = job.task(segments[2][len(prefix) : -len(".log")])
        if task is None:
            return None
        return job, task
