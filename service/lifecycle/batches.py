"""Batches: a whole upload created in one transaction, read, canceled in bulk, results."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.orm import Session

from service.core import events
from service.core.ids import new_id, new_ids
from service.core.storage import Storage
from service.core.tables import Batch, Job, utcnow
from service.lifecycle import queues
from service.lifecycle.hook import bulk_transition, finish_batch_if_done
from service.lifecycle.jobs import JobSpec, canceled_now, store_input_image
from service.lifecycle.status import BatchStatus, JobStatus

BULK_LANE = 1  # below interactive jobs (lane 0): a big upload never starves a single job


def create_batch(
    *,
    session: Session,
    storage: Storage,
    api_key_id: str,
    specs: list[JobSpec],
    input_format: str,
    webhook: str | None,
    metadata: dict[str, Any],
) -> tuple[Batch, list[str]]:
    """Insert the batch and all its jobs (in upload order) at once; returns it and the job ids.

    Input images are stored first, as for single jobs. The caller commits, then
    publishes `wakeups(...)`.
    """
    now = utcnow()
    ids = new_ids("job", len(specs))  # consecutive: workers take lines in upload order
    batch = Batch(
        id=new_id("batch"),
        api_key_id=api_key_id,
        status=BatchStatus.QUEUED,
        total=len(specs),
        n_queued=len(specs),
        input_format=input_format,
        webhook=webhook,
        metadata_=metadata,
        created_at=now,
    )
    rows = [
        {
            "id": job_id,
            "model": spec.model,
            "task": spec.task,
            "input": store_input_image(storage, job_id, spec),
            "metadata_": spec.metadata,
            "webhook": spec.webhook,
            "webhook_events": spec.webhook_events or ["completed"],
            "custom_id": spec.custom_id,
            "line_no": spec.line_no,
            "api_key_id": api_key_id,
            "batch_id": batch.id,
            "lane": BULK_LANE,
            "status": JobStatus.QUEUED,
            "attempts": 0,
            "cancel_requested": False,
            "created_at": now,
            "enqueued_at": now,
        }
        for job_id, spec in zip(ids, specs, strict=True)
    ]
    session.add(batch)
    session.flush()
    session.execute(insert(Job), rows)
    queues.moved(session=session, changes=Counter((row["model"], BULK_LANE) for row in rows))
    return batch, ids


def wakeups(ids: list[str], models: list[str], per_model: int) -> list[tuple[str, str]]:
    """A few wake-up messages per model, not one per line.

    Each worker run passes the baton while its model has queued jobs
    (service/workers/handler.py), so a handful drain any number of lines.
    """
    first: dict[str, str] = {}
    for job_id, model in zip(ids, models, strict=True):
        first.setdefault(model, job_id)
    return [
        (job_id, model) for model, job_id in first.items() for _ in range(min(per_model, len(ids)))
    ]


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
    """Queued jobs end `canceled` now and never run; running ones stop at their next step
    (their workers are pushed the request after the commit, as for one job)."""
    if BatchStatus(batch.status).is_terminal:
        return batch
    # The batch is `canceling` before its counters move, so the last move finishes it
    # as `canceled`. Job rows first, then the batch row: the order every transition uses.
    held = session.execute(
        update(Job)
        .where(Job.batch_id == batch.id, Job.status == JobStatus.RUNNING)
        .values(cancel_requested=True)
        .returning(Job.id, Job.worker_id)
        .execution_options(synchronize_session=False)
    ).all()
    # Their workers are told once this commits: they stop at their next step.
    events.push_cancels_on_commit(session, [(row.id, row.worker_id) for row in held])
    # Lock the queued rows before the batch row, as a worker's claim does.
    session.execute(
        select(Job.id)
        .where(Job.batch_id == batch.id, Job.status == JobStatus.QUEUED)
        .with_for_update()
    ).all()
    session.execute(
        update(Batch).where(Batch.id == batch.id).values(status=BatchStatus.CANCELING)
    )
    canceled = bulk_transition(
        session=session,
        previous=JobStatus.QUEUED,
        where=[Job.batch_id == batch.id],
        values=canceled_now(),
    )
    if not canceled:
        finish_batch_if_done(session=session, batch_id=batch.id)
    session.flush()
    session.refresh(batch)
    return batch


def iter_results(*, session: Session, batch_id: str) -> Iterator[Any]:
    """Rows in upload order, fetched in chunks so 10,000 lines never sit in memory at once."""
    query = (
        select(Job.custom_id, Job.id, Job.status, Job.output, Job.error, Job.data_removed_at)
        .where(Job.batch_id == batch_id)
        .order_by(Job.line_no)
        .execution_options(yield_per=500)
    )
    yield from session.execute(query)
