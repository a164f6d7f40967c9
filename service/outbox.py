"""The webhook outbox: an event row written in the same transaction as the state change.

A crash between the state change and the delivery loses nothing: the
dispatcher delivers whatever is pending. The payload is a snapshot of the job
at the time of the event with storage keys, not URLs; delivery turns keys into
fresh presigned URLs, so a retry hours later still carries working links.
"""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service.ids import new_id
from service.jobview import batch_object, job_object
from service.tables import Batch, Job, WebhookEvent, utcnow

# What each job status announces, and which `webhook_events` filter lets it through.
_JOB_EVENTS = {
    "running": ("job.started", "started"),
    "succeeded": ("job.succeeded", "completed"),
    "failed": ("job.failed", "completed"),
    "canceled": ("job.canceled", "completed"),
}


def job_event(*, session: Session, job: Job) -> WebhookEvent | None:
    """Record the event for the job's current status, if its webhook asked for it."""
    if not job.webhook or job.status not in _JOB_EVENTS:
        return None
    event_type, filter_name = _JOB_EVENTS[job.status]
    if filter_name not in (job.webhook_events or ["completed"]):
        return None
    now = utcnow()
    event = WebhookEvent(
        id=new_id("msg"),
        api_key_id=job.api_key_id,
        job_id=job.id,
        type=event_type,
        url=job.webhook,
        payload={
            "type": event_type,
            "timestamp": now.isoformat().replace("+00:00", "Z"),
            "data": job_object(job, None, 0),
        },
        status="pending",
        next_attempt_at=now,
        created_at=now,
    )
    session.add(event)
    return event


def batch_event(*, session: Session, batch: Batch) -> WebhookEvent | None:
    """`batch.completed`, once: the caller's conditional status update guarantees it."""
    if not batch.webhook:
        return None
    now = utcnow()
    event = WebhookEvent(
        id=new_id("msg"),
        api_key_id=batch.api_key_id,
        batch_id=batch.id,
        type="batch.completed",
        url=batch.webhook,
        payload={
            "type": "batch.completed",
            "timestamp": now.isoformat().replace("+00:00", "Z"),
            "data": batch_object(batch),
        },
        status="pending",
        next_attempt_at=now,
        created_at=now,
    )
    session.add(event)
    return event


def event_counts(*, session: Session) -> dict[tuple[str, str], int]:
    rows = session.execute(
        select(WebhookEvent.type, WebhookEvent.status, func.count())
        .group_by(WebhookEvent.type, WebhookEvent.status)
    )
    return {(event_type, status): n for event_type, status, n in rows}
