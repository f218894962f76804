"""Alert the people who own a training job when it fails: by e-mail and through a Huawei Cloud SMN topic.

The DAG's ``on_failure_callback`` holds two :class:`ModelArtsTaskLogsNotifier`: one wraps Airflow's
``SmtpNotifier``, the other an :class:`SmnNotifier`. When the run fails, each asks ModelArts for the
job's phase, a fresh temporary log link per worker and the last ``tail_lines`` lines of each log, puts
them in the context as ``modelarts`` and lets the wrapped notifier render its subject and body from them.
The SMN message goes to every subscription of the topic (e-mail, SMS, HTTP(S), DingTalk, WeCom...);
its ``sms`` entry is a one-line version.

Configuration (environment): ``MODELARTS_TRAINING_JOB_ID`` (default ``demo-train-fail``, a job of
``example_dags/demo_scenario.json`` that fails), ``MODELARTS_ALERT_EMAIL`` (recipient; without it the
alert is only written to the log), ``MODELARTS_ALERT_SMN_TOPIC_URN`` (an SMN topic URN; without it no
SMN message is sent), ``MODELARTS_POLL_INTERVAL`` (seconds, default 30). The e-mail goes through the
``smtp_default`` connection, the SMN message through ``modelarts_default`` (its credentials and project,
and the extra ``smn_endpoint`` if set).
"""

from __future__ import annotations

# [START howto_notifier_modelarts_task_logs]
import os
from datetime import datetime

from airflow.providers.smtp.notifications.smtp import SmtpNotifier
from airflow.sdk import DAG

from airflow_provider_modelarts.notifications.modelarts import ModelArtsTaskLogsNotifier
from airflow_provider_modelarts.notifications.smn import SmnNotifier
from airflow_provider_modelarts.sensors.modelarts import ModelArtsTrainingJobSensor

JOB_ID = os.environ.get("MODELARTS_TRAINING_JOB_ID", "demo-train-fail")
ALERT_EMAIL = os.environ.get("MODELARTS_ALERT_EMAIL")
SMN_TOPIC_URN = os.environ.get("MODELARTS_ALERT_SMN_TOPIC_URN", "")
POLL_INTERVAL = float(os.environ.get("MODELARTS_POLL_INTERVAL", "30"))

ALERT_SUBJECT = (
    "[Airflow] {{ dag.dag_id }}: training job {{ modelarts.training_job_id }} is {{ modelarts.phase }}"
)
ALERT_BODY = """
<h3>Training job {{ modelarts.training_job_id }} ended in phase {{ modelarts.phase }}</h3>
{% if modelarts.console_url %}<p><a href="{{ modelarts.console_url }}">Open the job in the ModelArts console</a></p>{% endif %}
<ul>
{% for status in modelarts.task_statuses %}<li>{{ status.task }}: exit code {{ status.exit_code }} {{ status.message }}</li>{% endfor %}
</ul>
<h4>Log links (valid for a few minutes)</h4>
<ul>
{% for task_id, link in modelarts.log_urls.items() %}<li><a href="{{ link.url }}">{{ task_id }}</a> until {{ link.expires_at }}</li>{% endfor %}
</ul>
{% for task_id, tail in modelarts.log_tails.items() %}<h4>Last lines of {{ task_id }}</h4><pre>{{ tail }}</pre>{% endfor %}
{% for error in modelarts.errors %}<p><b>Note:</b> {{ error }}</p>{% endfor %}
"""

alert = ModelArtsTaskLogsNotifier(
    training_job_id=JOB_ID,
    notifier=SmtpNotifier(to=ALERT_EMAIL, subject=ALERT_SUBJECT, html_content=ALERT_BODY)
    if ALERT_EMAIL
    else None,
    tail_lines=20,
)
# [END howto_notifier_modelarts_task_logs]

# [START howto_notifier_smn]
smn_alert = ModelArtsTaskLogsNotifier(
    training_job_id=JOB_ID,
    notifier=SmnNotifier(
        topic_urn=SMN_TOPIC_URN,
        subject=ALERT_SUBJECT,
        message_structure={
            # E-mail, HTTP(S), DingTalk, WeCom... subscribers: the whole summary (cut to 256 KB if needed).
            "default": "{{ modelarts.summary }}",
            # SMS subscribers: one line, cut to what SMN sends whole.
            "sms": "Airflow {{ dag.dag_id }}: ModelArts job {{ modelarts.training_job_id }} "
            "is {{ modelarts.phase }}. {{ modelarts.console_url }}",
        },
    ),
    tail_lines=20,
)
# [END howto_notifier_smn]

with DAG(
    dag_id="example_modelarts_failure_alert",
    schedule=None,
    start_date=datetime(2024, 1, 1),
    catchup=False,
    on_failure_callback=[alert, smn_alert] if SMN_TOPIC_URN else alert,
    tags=["example", "modelarts"],
) as dag:
    ModelArtsTrainingJobSensor(
        task_id="wait_for_training",
        training_job_id=JOB_ID,
        deferrable=True,
        poke_interval=POLL_INTERVAL,
        timeout=6 * 60 * 60,
    )
