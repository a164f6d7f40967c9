"""Batch rows: creating a whole upload in one transaction, reading, canceling, results."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.orm import Session

from service.core.ids import new_id
from service.core.tables import Batch, Job, utcnow
from service.outbox import job_event
from service.transitions import batch_counts_moved, finish_batch_if_done

BULK_LANE = 1  # below interactive jobs (lane 0): a big upload never starves a single job


def create_batch(
    *,
    session: Session,
    api_key_id: str,
    ids: list[str],
    jobs: list[dict[str, Any]],
    input_format: str,
    webhook: str | None,
    metadata: dict[str, Any],
) -> Batch:
    """Insert the batch and all its jobs (dicts of Job columns, in upload order) at once."""
    now = utcnow()
    batch = Batch(
        id=new_id("batch"),
        api_key_id=api_key_id,
        status="queued",
        total=len(jobs),
        n_queued=len(jobs),
        input_format=input_format,
        webhook=webhook,
        metadata_=metadata,
        created_at=now,
    )
    session.add(batch)
    session.flush()
    rows = [
        {
            **job,
            "id": job_id,
            "api_key_id": api_key_id,
            "batch_id": batch.id,
            "lane": BULK_LANE,
            "status": "queued",
            "attempts": 0,
            "cancel_requested": False,
            "created_at": now,
            "enqueued_at": now,
        }
        for job_id, job in zip(ids, jobs, strict=True)
    ]
    session.execute(insert(Job), rows)
    return batch


def get_batch(*, session: Session, api_key_id: str, batch_id: str) -> Batch | None:
    return session.scalar(select(Batch).where(Batch.id == batch_id, Batch.api_key_id == api_key_id))


def list_batches(
    *, session: Session, api_key_id: str, limit: int, after: str | None = None
) -> tuple[list[Batch], bool]:
    query = select(Batch).where(Batch.api_key_id == api_key_id)
    if after:
        query = query.where(Batch.id < after)
    rows = list(session.scalars(query.order_by(Batch.id.desc()).limit(limit + 1)))
    return rows[:limit], len(rows) > limit


def cancel_batch(*, session: Session, batch: Batch) -> Batch:
    """Queued jobs end `canceled` now and never run; running ones stop at their next step."""
    if batch.status in ("completed", "canceled"):
        return batch
    now = utcnow()
    # Job rows first, then the batch row: the order every transition uses.
    canceled = session.execute(
        update(Job)
        .where(Job.batch_id == batch.id, Job.status == "queued")
        .values(status="canceled", completed_at=now, cancel_requested=True)
        .returning(Job.id, Job.webhook)
        .execution_options(synchronize_session=False)
    ).all()
    session.execute(
        update(Job)
        .where(Job.batch_id == batch.id, Job.status == "running")
        .values(cancel_requested=True)
        .execution_options(synchronize_session=False)
    )
    with_hooks = [row.id for row in canceled if row.webhook]
    for job in session.scalars(select(Job).where(Job.id.in_(with_hooks))):
        job_event(session=session, job=job)
    session.execute(update(Batch).where(Batch.id == batch.id).values(status="canceling"))
    if canceled:
        batch_counts_moved(
            session=session, batch_id=batch.id, moves={("queued", "canceled"): len(canceled)}
        )
    else:
        finish_batch_if_done(session=session, batch_id=batch.id)
    session.flush()
    session.refresh(batch)
    return batch


def iter_results(*, session: Session, batch_id: str) -> Iterator[Any]:
    """Rows in upload order, fetched in chunks so 10,000 lines never sit in memory at once."""
    query = (
        select(Job.custom_id, Job.id, Job.status, Job.output, Job.error)
        .where(Job.batch_id == batch_id)
        .order_by(Job.line_no)
        .execution_options(yield_per=500)
    )
    yield from session.execute(query)
