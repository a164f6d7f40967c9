"""The Celery app, shared by the API (publishing) and the workers (consuming).

Messages carry only a job id; Postgres holds the job. Settings follow
CELERY-NOTES.md: late acks with reject-on-worker-lost, one message per
process, and a visibility timeout well above the longest job.
"""

from __future__ import annotations

from celery import Celery

from service.settings import Settings

RUN_JOB = "janus.run_job"


def queue_name(model: str) -> str:
    return f"model.{model}"


def make_celery(settings: Settings) -> Celery:
    app = Celery("janus", broker=settings.broker_url, set_as_current=False)
    transport: dict[str, object] = {}
    if settings.broker_url.startswith(("redis://", "rediss://")):
        # Fail a publish fast when Redis is away; the sweeper republishes later.
        transport.update(visibility_timeout=settings.visibility_timeout_seconds,
                         socket_connect_timeout=2, socket_timeout=10, retry_on_timeout=True)
        if settings.broker_key_prefix:
            transport["global_keyprefix"] = settings.broker_key_prefix
    # (kombu's SQLAlchemy transport hands its options to create_engine, so it gets none.)
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        task_store_errors_even_if_ignored=False,
        task_serializer="json",
        accept_content=["json"],
        broker_transport_options=transport,
        result_backend_transport_options=transport,
        broker_connection_timeout=2,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        task_default_queue="janus.default",
        enable_utc=True,
    )
    return app
