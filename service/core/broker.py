"""The broker: the Celery app factory, queue names, publishing and queue depth.

Both the API (publishing) and the workers (consuming) import it from here, below
them. Messages carry only a job id; Postgres holds the job. The app follows
Celery's delivery rules for long jobs: late acks with reject-on-worker-lost (a
killed worker's message is redelivered), one message per process, and a Redis
visibility timeout well above the longest job (else a long job runs twice).
Worker-only configuration (the task, the consumer) lives in `service.workers`.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import redis
from celery import Celery
from kombu.exceptions import KombuError, OperationalError

from service.core.fastpublish import RedisPublisher
from service.core.settings import Settings

log = logging.getLogger(__name__)

RUN_JOB = "janus.run_job"


def queue_name(model: str) -> str:
    return f"model.{model}"


# A publisher (the API, the sweeper) waits this long for any one Redis reply. A Redis
# that accepts connections but never answers must cost a request about a second, not
# the 40 s and more that retried long timeouts added up to; the row waits for the sweeper.
PUBLISH_SOCKET_TIMEOUT = 1.0
# All retries of one publish call together stop after this long.
PUBLISH_DEADLINE_SECONDS = 1.0


def make_celery(settings: Settings, *, publisher: bool = False) -> Celery:
    """The Celery app; `publisher=True` for processes that only publish (short timeouts).

    Workers keep the longer socket timeout: their consumer blocks on Redis by design.
    """
    app = Celery("janus", broker=settings.broker_url, set_as_current=False)
    transport: dict[str, object] = {}
    if settings.broker_url.startswith(("redis://", "rediss://")):
        # Fail a publish fast when Redis is away; the sweeper republishes later.
        transport.update(visibility_timeout=settings.visibility_timeout_seconds,
                         socket_connect_timeout=2, socket_timeout=10, retry_on_timeout=True)
        if publisher:
            transport.update(socket_connect_timeout=PUBLISH_SOCKET_TIMEOUT,
                             socket_timeout=PUBLISH_SOCKET_TIMEOUT, retry_on_timeout=False)
        if settings.broker_key_prefix:
            transport["global_keyprefix"] = settings.broker_key_prefix
        # Queue lists are read (`queue_depth`) and, by publishers, pushed to directly: one
        # LPUSH per message instead of send_task (service/core/fastpublish.py).
        queues = RedisPublisher(
            settings.broker_url, settings.broker_key_prefix, PUBLISH_SOCKET_TIMEOUT)
        app.janus_queues = queues  # type: ignore[attr-defined]
        if publisher:
            app.janus_publisher = queues  # type: ignore[attr-defined]
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


def publish(celery: Celery, jobs: list[tuple[str, str]], max_retries: int) -> list[str]:
    """Publish (job id, model) pairs; returns the ids that could not be published.

    Retries are bounded so a request never hangs on a dead broker: the row is
    already committed, and the sweeper publishes whatever is left behind.
    """
    done: set[str] = set()
    deadline = time.monotonic() + PUBLISH_DEADLINE_SECONDS
    fast: RedisPublisher | None = getattr(celery, "janus_publisher", None)
    if fast is not None:
        queued = [(job_id, queue_name(model)) for job_id, model in jobs]
        done = fast.publish(RUN_JOB, queued, max_retries, deadline)
        if len(done) < len(jobs):
            log.warning("broker unavailable, %d job(s) left for the sweeper",
                        len(jobs) - len(done))
        return [job_id for job_id, _ in jobs if job_id not in done]

    def _give_up_late(exc: BaseException, _interval: float) -> None:
        # kombu calls this before each retry: a broker that times out (rather than
        # refusing) would otherwise cost a socket timeout per retry, per request.
        if time.monotonic() > deadline:
            raise exc

    policy: dict[str, Any] = {
        "max_retries": max_retries,
        "interval_start": 0,
        "interval_step": 0.3,
        "interval_max": 1.0,
        "errback": _give_up_late,
    }
    try:
        with celery.producer_or_acquire() as producer:
            for job_id, model in jobs:
                celery.send_task(
                    RUN_JOB,
                    args=[job_id],
                    task_id=job_id,
                    queue=queue_name(model),
                    producer=producer,
                    retry=True,
                    retry_policy=policy,
                )
                done.add(job_id)
    except (OperationalError, KombuError, OSError) as exc:
        # One failure means the broker is away: don't pay the retries again per job.
        log.warning(
            "broker unavailable, %d job(s) left for the sweeper: %s", len(jobs) - len(done), exc
        )
    return [job_id for job_id, _ in jobs if job_id not in done]


def ping(celery: Celery, timeout: float = PUBLISH_SOCKET_TIMEOUT) -> None:
    """Raise unless the broker answers within about `timeout` seconds (for /readyz)."""
    url = celery.conf.broker_url or ""
    if url.startswith(("redis://", "rediss://")):
        # A direct PING: kombu's connection check retries and waits far longer than
        # a readiness probe may when Redis accepts connections but does not answer.
        client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
        try:
            client.ping()
        finally:
            client.close()
        return
    with celery.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, timeout=2)


def queue_depths(celery: Celery, models: list[str]) -> dict[str, int | None]:
    """Every model's queue depth (for /metrics); all None, in about a second, if the
    broker does not answer, instead of a connection attempt with retries per model."""
    try:
        ping(celery)
    except Exception as exc:  # noqa: BLE001 - any client error: depth unknown
        log.debug("queue depths unavailable: %s", exc)
        return dict.fromkeys(models)
    return {model: queue_depth(celery, model) for model in models}


def queue_depth(celery: Celery, model: str) -> int | None:
    """Messages waiting in a model's broker queue, or None if the broker can't say."""
    queues: RedisPublisher | None = getattr(celery, "janus_queues", None)
    if queues is not None:
        # Not kombu's passive queue_declare: with a `global_keyprefix` it checks that the
        # queue exists under the unprefixed key, finds none and reads as an empty queue,
        # so the sweeper would take any waiting queue for a lost one.
        try:
            return queues.depth(queue_name(model))
        except (redis.RedisError, OSError) as exc:
            log.debug("queue depth unavailable: %s", exc)
            return None
    try:
        with celery.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
            channel = conn.default_channel
            try:
                return channel.queue_declare(queue=queue_name(model), passive=True).message_count
            except Exception:  # a queue nobody declared yet is an empty queue
                return 0
    except (OperationalError, KombuError, OSError) as exc:
        log.debug("queue depth unavailable: %s", exc)
        return None
