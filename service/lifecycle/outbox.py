"""The webhook outbox: an event row written in the same transaction as the state change.

A crash between the state change and the delivery loses nothing: the
dispatcher delivers whatever is pending. The payload is a snapshot of the job
at the time of the event with storage keys, not URLs; delivery turns keys into
fresh presigned URLs, so a retry hours later still carries working links.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service.core.ids import new_id
from service.core.tables import Batch, Job, WebhookEvent, utcnow
from service.lifecycle.status import JobStatus
from service.lifecycle.views import batch_object, job_object

# What each job status announces, and which `webhook_events` filter lets it through.
_JOB_EVENTS = {
    JobStatus.RUNNING: ("job.started", "started"),
    JobStatus.SUCCEEDED: ("job.succeeded", "completed"),
    JobStatus.FAILED: ("job.failed", "completed"),
    JobStatus.CANCELED: ("job.canceled", "completed"),
}


def job_event(*, session: Session, job: Job) -> WebhookEvent | None:
    """Record the event for the job's current status, if its webhook asked for it."""
    if not job.webhook or job.status not in _JOB_EVENTS:
        return None
    event_type, filter_name = _JOB_EVENTS[job.status]
    if filter_name not in (job.webhook_events or ["completed"]):
        return None
    return _record(
        session, job.api_key_id, event_type, job.webhook, job_object(job, None, 0), job_id=job.id
    )


def batch_event(*, session: Session, batch: Batch) -> WebhookEvent | None:
    """`batch.completed`, once: the caller's conditional status update guarantees it."""
    if not batch.webhook:
        return None
    return _record(
        session,
        batch.api_key_id,
        "batch.completed",
        batch.webhook,
        batch_object(batch),
        batch_id=batch.id,
    )


def _record(
    session: Session, api_key_id: str, event_type: str, url: str, data: dict[str, Any], **owner: str
) -> WebhookEvent:
    now = utcnow()
    event = WebhookEvent(
        id=new_id("msg"),
        api_key_id=api_key_id,
        type=event_type,
        url=url,
        payload={
            "type": event_type,
            "timestamp": now.isoformat().replace("+00:00", "Z"),
            "data": data,
        },
        status="pending",
        next_attempt_at=now,
        created_at=now,
        **owner,
    )
    session.add(event)
    return event


def event_counts(*, session: Session) -> dict[tuple[str, str], int]:
    rows = session.execute(
        select(WebhookEvent.type, WebhookEvent.status, func.count()).group_by(
            WebhookEvent.type, WebhookEvent.status
        )
    )
    return {(event_type, status): n for event_type, status, n in rows}
