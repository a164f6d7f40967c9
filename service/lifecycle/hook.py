"""The one hook every job status change goes through, inside the changing transaction.

Whatever must stay consistent with a job's status (its webhook event, its
batch's counters and status, its model's queue count) is written here, so no
code path can change a status and forget the rest. `transition` is the only
writer of `jobs.status`: a conditional UPDATE from a known status (two
processes racing on one job can never both win), then the hook, for one job or
a whole set at once. Job rows are updated first, batch rows second, and queue
counts last, at the commit (service/lifecycle/queues.py), always in that order,
so concurrent transitions cannot deadlock.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any, Protocol

from sqlalchemy import ColumnElement, case, func, select, update
from sqlalchemy.orm import Session

from service.core import events
from service.core.tables import Batch, Job, utcnow
from service.lifecycle import queues
from service.lifecycle.outbox import batch_event, job_event
from service.lifecycle.status import BatchStatus, JobStatus


class Moved(Protocol):
    """What the hook reads of a changed job: an ORM row, or a RETURNING row of a bulk UPDATE."""

    id: str
    model: str
    lane: int
    batch_id: str | None
    status: str
    webhook: str | None
    attempts: int


# Columns a bulk transition returns: enough for the hook without loading whole rows.
MOVED_COLUMNS = (Job.id, Job.model, Job.lane, Job.batch_id, Job.status, Job.webhook, Job.attempts)


def transition(
    *,
    session: Session,
    previous: JobStatus,
    where: Sequence[ColumnElement[bool]],
    values: dict[str, Any],
) -> list[Job]:
    """Move the jobs matching `where` that are still `previous`; run the hook; return them."""
    jobs = list(
        session.scalars(
            update(Job)
            .where(Job.status == previous, *where)
            .values(**values)
            .returning(Job)
            # Fresh values even if the row is already in this session.
            .execution_options(synchronize_session=False, populate_existing=True)
        )
    )
    jobs_changed(session=session, jobs=jobs, previous=previous)
    return jobs


def bulk_transition(
    *,
    session: Session,
    previous: JobStatus,
    where: Sequence[ColumnElement[bool]],
    values: dict[str, Any],
) -> int:
    """`transition` for thousands of rows: returns a count and loads only announced jobs."""
    rows = session.execute(
        update(Job)
        .where(Job.status == previous, *where)
        .values(**values)
        .returning(*MOVED_COLUMNS)
        .execution_options(synchronize_session=False)
    ).all()
    jobs_changed(session=session, jobs=rows, previous=previous)
    return len(rows)


def jobs_changed(*, session: Session, jobs: Sequence[Moved], previous: str) -> None:
    """The hook: `jobs` (already updated) left `previous` for their current status."""
    moves: dict[str, Counter[tuple[str, str]]] = {}
    queued: Counter[tuple[str, int]] = Counter()  # (model, lane) -> jobs in (+) or out (-)
    announce: list[Moved] = []
    for job in jobs:
        if previous != job.status:
            if previous == JobStatus.QUEUED:
                queued[(job.model, job.lane)] -= 1
            elif job.status == JobStatus.QUEUED:
                queued[(job.model, job.lane)] += 1
        if job.batch_id is not None and previous != job.status:
            moves.setdefault(job.batch_id, Counter())[(previous, job.status)] += 1
        _announce(session, job.id, previous, job.status)
        if not job.webhook or job.status == JobStatus.QUEUED:
            continue
        if job.status == JobStatus.RUNNING and job.attempts > 1:
            continue  # a retry after a lost worker is not a new start for the client
        announce.append(job)
    missing = [job.id for job in announce if not isinstance(job, Job)]
    loaded = {}
    if missing:
        loaded = {job.id: job for job in session.scalars(select(Job).where(Job.id.in_(missing)))}
    for job in announce:
        job_event(session=session, job=job if isinstance(job, Job) else loaded[job.id])
    for batch_id, counts in moves.items():
        batch_counts_moved(session=session, batch_id=batch_id, moves=dict(counts))
        events.note_after_commit(session, batch_id, events.COUNTS, {})
    if queued:
        queues.moved(session=session, changes=queued)


def _announce(session: Session, job_id: str, previous: str, status: str) -> None:
    """The job's live event for this move, written once the transaction commits."""
    if status == JobStatus.RUNNING and previous != status:
        events.note_after_commit(session, job_id, events.STARTED, {})
    elif JobStatus(status).is_terminal and previous != status:
        events.note_after_commit(session, job_id, events.STATUS, {"status": str(status)})


def batch_counts_moved(
    *, session: Session, batch_id: str, moves: dict[tuple[str, str], int]
) -> None:
    """Apply {(from, to): n} to a batch's counters; finish the batch when nothing is left."""
    delta: dict[str, int] = {}
    for (old, new), n in moves.items():
        delta[old] = delta.get(old, 0) - n
        delta[new] = delta.get(new, 0) + n
    values = {f"n_{s}": getattr(Batch, f"n_{s}") + d for s, d in delta.items() if d}
    if not values:
        finish_batch_if_done(session=session, batch_id=batch_id)
        return
    now = utcnow()
    if delta.get(JobStatus.RUNNING, 0) > 0 or any(new == JobStatus.RUNNING for _, new in moves):
        values["started_at"] = func.coalesce(Batch.started_at, now)
        values["status"] = case(
            (Batch.status == BatchStatus.QUEUED, BatchStatus.RUNNING.value), else_=Batch.status
        )
    row = session.execute(
        update(Batch)
        .where(Batch.id == batch_id)
        .values(**values)
        .returning(Batch.n_queued, Batch.n_running, Batch.status)
    ).first()
    if row is None or row.n_queued or row.n_running or BatchStatus(row.status).is_terminal:
        return
    finish_batch_if_done(session=session, batch_id=batch_id)


def finish_batch_if_done(*, session: Session, batch_id: str) -> None:
    """Every job terminal: `completed` (or `canceled` after a cancel), and one webhook event."""
    row = session.execute(
        select(Batch.n_queued, Batch.n_running, Batch.status).where(Batch.id == batch_id)
    ).first()
    if row is None or row.n_queued or row.n_running or BatchStatus(row.status).is_terminal:
        return
    now = utcnow()
    final = BatchStatus.CANCELED if row.status == BatchStatus.CANCELING else BatchStatus.COMPLETED
    batch = session.scalar(
        update(Batch)
        .where(Batch.id == batch_id, Batch.status == row.status)
        .values(status=final, completed_at=now)
        .returning(Batch)
        # Fresh values even if the row is already in this session.
        .execution_options(synchronize_session=False, populate_existing=True)
    )
    if batch is not None:
        batch_event(session=session, batch=batch)
        events.note_after_commit(session, batch_id, events.STATUS, {"status": str(final)})
