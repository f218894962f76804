"""The provider's error types. Each carries what ModelArts said: HTTP status, error_code, error_msg, request id."""

from __future__ import annotations

from typing import Any

from airflow.providers.common.compat.sdk import AirflowException, AirflowFailException

__all__ = [
    "ModelArtsApiError",
    "ModelArtsArchiveDestinationError",
    "ModelArtsArchiveStoppedError",
    "ModelArtsAuthError",
    "ModelArtsConfigError",
    "ModelArtsError",
    "ModelArtsJobFailedError",
    "ModelArtsLogLinkExpiredError",
    "ModelArtsLogTransferError",
    "ModelArtsNotFoundError",
    "ModelArtsResponseError",
    "ModelArtsTransportError",
    "ModelArtsTriggerEventError",
    "ModelArtsUnexpectedJobError",
    "ModelArtsValidationError",
    "ModelArtsWaitTimeoutError",
]


class ModelArtsError(AirflowException):
    """Base class of every error this provider raises."""


class ModelArtsConfigError(ModelArtsError, ValueError):
    """The ``modelarts`` connection (or an argument) is missing a field or holds a malformed value.

    Raised before any request is sent.
    """


class ModelArtsValidationError(ModelArtsError, ValueError):
    """An argument (job id, task id, destination...) or a value of an API body is not acceptable.

    Every public class (hooks, operator, sensor, triggers, notifiers) raises it for a bad argument,
    before any request is sent. It is a :class:`ValueError` too, so ``except ValueError`` keeps working.
    """


class ModelArtsTriggerEventError(ModelArtsError):
    """A deferred task resumed with no event, or with an event that ends the wait in error."""


class ModelArtsWaitTimeoutError(ModelArtsError, AirflowFailException):
    """The job did not finish before the wait deadline (``timeout``); the task fails without retries."""


class ModelArtsApiError(ModelArtsError):
    """ModelArts (or the API gateway in front of it) answered with an error."""

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        error_code: str | None = None,
        error_msg: str | None = None,
        request_id: str | None = None,
        method: str | None = None,
        path: str | None = None,
    ) -> None:
        self.status_code = status_code  # type: ignore[assignment]  # the HTTP status ModelArts answered
        self.error_code = error_code
        self.error_msg = error_msg
        self.request_id = request_id
        self.method = method
        self.path = path
        details = ", ".join(
            f"{k}={v}"
            for k, v in (
                ("status", status_code),
                ("error_code", error_code),
                ("request_id", request_id),
            )
            if v is not None
        )
        super().__init__(f"{message} ({details})" if details else message)

    @property
    def is_retryable(self) -> bool:
        return self.status_code is not None and (self.status_code == 429 or self.status_code >= 500)


class ModelArtsAuthError(ModelArtsApiError):
    """Authentication or authorisation failed (401/403, IAM token could not be obtained)."""


class ModelArtsNotFoundError(ModelArtsApiError):
    """The training job (or task) does not exist."""


class ModelArtsResponseError(ModelArtsApiError):
    """ModelArts answered 2xx with a body that is not what the API promises (not JSON, missing field...)."""


class ModelArtsJobFailedError(ModelArtsError):
    """The training job ended in a failure phase."""

    def __init__(self, message: str, *, training_job_id: str, phase: str, failed_tasks: list[dict[str, Any]]):
        self.training_job_id = training_job_id
        self.phase = phase
        self.failed_tasks = failed_tasks
        super().__init__(message)


class ModelArtsLogLinkExpiredError(ModelArtsError):
    """OBS refused a log link because it expired (403 RequestTimeTooSkewed / "Request has expired.")."""


class ModelArtsLogTransferError(ModelArtsError):
    """A log could not be archived completely and verified."""


class ModelArtsTransportError(ModelArtsApiError):
    """The request did not get an HTTP answer (connection refused or reset, DNS failure, timeout)."""

    @property
    def is_retryable(self) -> bool:
        return True


class ModelArtsArchiveDestinationError(ModelArtsError):
    """The archive destination refused a write, a rename or a read (full, read-only, not a directory...).

    :param message: what happened.
    :param path: the object or file concerned.
    :param cause: the system's description (``strerror``), when there is one.
    :param committed: task logs already committed when the error happened (manifest errors).
    """

    def __init__(
        self, message: str, *, path: str, cause: str | None = None, committed: list[str] | None = None
    ) -> None:
        self.path = path
        self.cause = cause
        self.committed = list(committed or [])
        super().__init__(message)

    @classmethod
    def at(cls, path: str, action: str, err: OSError) -> ModelArtsArchiveDestinationError:
        """The error for ``action`` on ``path`` failing with ``err`` (its type, errno text and code)."""
        cause = f"{type(err).__name__}: {err.strerror or err}" + (
            f" [errno {err.errno}]" if err.errno else ""
        )
        return cls(f"The archive destination {action} {path}: {cause}", path=path, cause=cause)


class ModelArtsUnexpectedJobError(ModelArtsError):
    """ModelArts answered with another training job than the one asked for."""

    def __init__(self, *, requested: str, received: str) -> None:
        self.requested = requested
        self.received = received
        super().__init__(
            f"Asked ModelArts for training job {requested!r:.300} but the answer describes {received!r:.300}"
        )


class ModelArtsArchiveStoppedError(ModelArtsError):
    """The archive was stopped (task timeout or kill) before this log was committed."""
