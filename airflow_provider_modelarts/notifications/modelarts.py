"""Failure-alert notifier that brings a fresh log link and the log tail of a ModelArts training job."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow.providers.common.compat.sdk import BaseNotifier, mask_secret

if TYPE_CHECKING:
    import jinja2
    from airflow.providers.common.compat.sdk import Context

    from airflow_provider_modelarts.hooks.modelarts import ModelArtsHook


def _sandboxed_env(dag: Any) -> jinja2.Environment:
    """The environment a DAG would build, for DAG objects that cannot build one themselves."""
    try:
        from airflow.sdk.definitions._internal.templater import create_template_env
    except ImportError:  # pragma: no cover - the layout of Airflow's templating internals moved
        import jinja2.sandbox

        return jinja2.sandbox.SandboxedEnvironment(cache_size=0)
    folder = getattr(dag, "folder", None)
    searchpath = [folder] if isinstance(folder, str) else []
    extra = getattr(dag, "template_searchpath", None)
    if isinstance(extra, str):
        searchpath.append(extra)
    elif isinstance(extra, (list, tuple)):
        searchpath.extend(p for p in extra if isinstance(p, str))
    return create_template_env(
        native=False,
        searchpath=searchpath or None,
        user_defined_macros=getattr(dag, "user_defined_macros", None) or None,
        user_defined_filters=getattr(dag, "user_defined_filters", None) or None,
    )


class TemplatableDag:
    """Wraps a DAG object that lacks ``get_template_env`` (the ``SerializedDAG`` that DAG-level
    callbacks receive under ``airflow dags test``, apache/airflow#64649) and adds one.

    Every other attribute is read from the wrapped DAG, so templates can still use ``dag.dag_id``.
    """

    def __init__(self, dag: Any) -> None:
        self._dag = dag

    def __getattr__(self, name: str) -> Any:
        return getattr(self._dag, name)

    def get_template_env(self, *, force_sandboxed: bool = False) -> jinja2.Environment:
        return _sandboxed_env(self._dag)


def make_context_templatable(context: Context) -> None:
    """Replace ``context["dag"]`` by a :class:`TemplatableDag` if it cannot build a Jinja environment."""
    dag = context.get("dag")
    if dag is not None and not hasattr(dag, "get_template_env"):
        context["dag"] = TemplatableDag(dag)  # type: ignore[typeddict-item]


def _tail(text: str, lines: int) -> str:
    if lines <= 0:
        return ""
    return "\n".join(text.rstrip("\n").splitlines()[-lines:])


class ModelArtsTaskLogsNotifier(BaseNotifier):
    """Alert with a fresh log link and the last log lines of each task of a ModelArts training job.

    When called (e.g. as ``on_failure_callback`` of a task or a DAG) it fetches the job, a fresh
    temporary log link per task and the last ``tail_lines`` lines of each task's log (preview API),
    stores them in the context as ``context["modelarts"] = {"training_job_id", "phase", "log_urls",
    "log_tails", "console_url", "digest", "errors", "summary"}`` (``digest``: the failure digest of
    a failed job, see :mod:`airflow_provider_modelarts.digest`, or None) and then renders and calls the wrapped
    ``notifier`` (any :class:`BaseNotifier`, e.g. ``SmtpNotifier``, whose templates can use
    ``{{ modelarts.log_urls }}`` or ``{{ modelarts.summary }}``). Without a wrapped notifier the
    summary is written to the log.

    Building the alert never hides the failure being reported: whatever ModelArts could not provide is
    listed in ``errors`` and the alert is sent with the rest.

    :param training_job_id: the training job to report on. (templated)
    :param notifier: the notifier that delivers the alert; ``None`` logs it.
    :param task_ids: the job's tasks to include; default all of ``status.tasks``. (templated)
    :param tail_lines: how many trailing log lines per task. (templated)
    :param log_url_type: ``"preview"`` or ``"download"`` link. (templated)
    :param modelarts_conn_id: the ``modelarts`` connection. (templated)
    """

    template_fields: Sequence[str] = (
        "training_job_id",
        "task_ids",
        "tail_lines",
        "log_url_type",
        "modelarts_conn_id",
    )

    def __init__(
        self,
        training_job_id: str,
        notifier: BaseNotifier | None = None,
        *,
        task_ids: list[str] | None = None,
        tail_lines: int = 50,
        log_url_type: str = "preview",
        modelarts_conn_id: str = "modelarts_default",
    ) -> None:
        super().__init__()
        self.training_job_id = training_job_id
        self.notifier = notifier
        self.task_ids = task_ids
        self.tail_lines = tail_lines
        self.log_url_type = log_url_type
        self.modelarts_conn_id = modelarts_conn_id

    def get_template_env(self, dag: Any = None) -> jinja2.Environment:
        if dag is not None and not hasattr(dag, "get_template_env"):
            return _sandboxed_env(dag)
        return super().get_template_env(dag=dag)

    def __call__(self, *args: Any) -> None:
        if len(args) == 1 and isinstance(args[0], dict):
            make_context_templatable(args[0])  # type: ignore[arg-type]
        super().__call__(*args)

    def _hook(self) -> ModelArtsHook:
        from airflow_provider_modelarts.hooks.modelarts import ModelArtsHook

        return ModelArtsHook(self.modelarts_conn_id)

    def _failure_digest(self, job: dict[str, Any], known: Any) -> dict[str, Any] | None:
        """The failure digest: the one the sensor's exception carries, else built now for a failed job."""
        from airflow_provider_modelarts.digest import DEFAULT_PART_TIMEOUT, build_failure_digest
        from airflow_provider_modelarts.hooks.modelarts import ModelArtsHook

        if isinstance(known, dict) and known.get("training_job_id") == self.training_job_id:
            return known
        phase = (job.get("status") or {}).get("phase")
        if phase not in ("Failed", "Abnormal", "Terminated"):
            return None
        return build_failure_digest(
            job,
            training_job_id=self.training_job_id,
            hook_factory=lambda: ModelArtsHook(
                self.modelarts_conn_id, max_retries=0, request_timeout=DEFAULT_PART_TIMEOUT
            ),
            tail_lines=min(max(int(self.tail_lines), 0), 500),
        ).to_dict()

    def collect(self, known_digest: dict[str, Any] | None = None) -> dict[str, Any]:
        """Gather the job's phase, fresh links, log tails and failure digest; failures become ``errors``.

        :param known_digest: a digest already built (``ModelArtsTrainingJobFailed.digest``), reused.
        """
        job_id = self.training_job_id
        info: dict[str, Any] = {
            "training_job_id": job_id,
            "phase": None,
            "console_url": None,
            "log_urls": {},
            "log_tails": {},
            "task_statuses": [],
            "digest": None,
            "errors": [],
        }
        errors: list[str] = info["errors"]
        try:
            hook = self._hook()
            info["console_url"] = hook.console_url(job_id)
            job = hook.get_training_job(job_id)
        except Exception as e:
            errors.append(f"could not read training job {job_id}: {e}")
            return info
        status = job.get("status") or {}
        info["phase"] = status.get("phase")
        try:
            info["digest"] = self._failure_digest(job, known_digest)
        except Exception as e:
            errors.append(f"no failure digest: {e}")
        info["task_statuses"] = [s for s in status.get("task_statuses") or [] if isinstance(s, dict)]
        task_ids = list(self.task_ids) if self.task_ids else [str(t) for t in status.get("tasks") or []]
        if not task_ids:
            errors.append(f"training job {job_id} lists no tasks, so there are no logs to link")
        for task_id in task_ids:
            try:
                url = hook.get_task_log_url(job_id, task_id, download=self.log_url_type == "download")
                mask_secret(url)
                expires_at = hook.log_url_expires_at(url)
                info["log_urls"][task_id] = {
                    "url": url,
                    "type": self.log_url_type,
                    "expires_at": expires_at.isoformat(),
                }
            except Exception as e:
                errors.append(f"no log link for task {task_id}: {e}")
            try:
                preview = hook.preview_task_log(job_id, task_id)
                info["log_tails"][task_id] = _tail(str(preview.get("content") or ""), int(self.tail_lines))
            except Exception as e:
                errors.append(f"no log tail for task {task_id}: {e}")
        return info

    @staticmethod
    def summarize(info: dict[str, Any]) -> str:
        """Plain-text summary of :meth:`collect`'s result, for logs and e-mail bodies."""
        lines = [f"ModelArts training job {info['training_job_id']}: phase {info['phase'] or 'unknown'}"]
        if info.get("console_url"):
            lines.append(f"Console: {info['console_url']}")
        for status in info.get("task_statuses") or []:
            lines.append(
                f"Task {status.get('task')}: exit code {status.get('exit_code')}"
                f"{', ' + str(status['message']) if status.get('message') else ''}"
            )
        for task_id, link in info["log_urls"].items():
            lines.append(
                f"Log of {task_id} ({link['type']}, valid until {link['expires_at']}): {link['url']}"
            )
        for task_id, tail in info["log_tails"].items():
            lines.append(f"--- last lines of {task_id} ---")
            lines.append(tail)
        for error in info["errors"]:
            lines.append(f"NOTE: {error}")
        if info.get("digest"):
            from airflow_provider_modelarts.digest import FailureDigest

            lines.append(FailureDigest(**info["digest"]).render())
        return "\n".join(lines)

    def notify(self, context: Context) -> None:
        info = self.collect(getattr(context.get("exception"), "digest", None))
        info["summary"] = self.summarize(info)
        context["modelarts"] = info  # type: ignore[typeddict-unknown-key]
        if self.notifier is None:
            self.log.info("%s", info["summary"])
            return
        make_context_templatable(context)
        wrapped = self.notifier
        wrapped._update_context(context)
        wrapped.render_template_fields(context, jinja_env=self.get_template_env(dag=context.get("dag")))
        wrapped.notify(context)
