"""Publishing job ids to the broker, only ever after the rows are committed."""

from __future__ import annotations

import logging

from celery import Celery
from kombu.exceptions import KombuError, OperationalError

from service.workers.celery_app import RUN_JOB, queue_name

log = logging.getLogger(__name__)


def publish(celery: Celery, jobs: list[tuple[str, str]], max_retries: int) -> list[str]:
    """Publish (job id, model) pairs; returns the ids that could not be published.

    Retries are bounded so a request never hangs on a dead broker: the row is
    already committed, and the sweeper publishes whatever is left behind.
    """
    done: set[str] = set()
    policy = {
        "max_retries": max_retries,
        "interval_start": 0,
        "interval_step": 0.3,
        "interval_max": 1.0,
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


def queue_depth(celery: Celery, model: str) -> int | None:
    """Messages waiting in a model's broker queue, or None if the broker can't say."""
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
