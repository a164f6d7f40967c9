"""The one hook every job state change goes through, inside the changing transaction.

Whatever must stay consistent with a job's status (its webhook event, its
batch's counters and status) is written here, so no code path can change a
status and forget the rest. Callers update the job row first and the batch row
second, always in that order, so concurrent transitions cannot deadlock.
"""

from __future__ import annotations

from sqlalchemy import case, func, select, update
from sqlalchemy.orm import Session

from service.core.tables import Batch, Job, utcnow
from service.outbox import batch_event, job_event


def job_changed(*, session: Session, job: Job, previous: str, first_start: bool = True) -> None:
    if job.batch_id is not None and previous != job.status:
        batch_counts_moved(
            session=session, batch_id=job.batch_id, moves={(previous, job.status): 1}
        )
    if job.status == "running" and not first_start:
        return  # a retry after a lost worker is not a new start for the client
    if job.status != "queued":
        job_event(session=session, job=job)


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
    if delta.get("running", 0) > 0 or any(new == "running" for _, new in moves):
        values["started_at"] = func.coalesce(Batch.started_at, now)
        values["status"] = case((Batch.status == "queued", "running"), else_=Batch.status)
    row = session.execute(
        update(Batch)
        .where(Batch.id == batch_id)
        .values(**values)
        .returning(Batch.n_queued, Batch.n_running, Batch.status)
    ).first()
    if row is None or row.n_queued or row.n_running or row.status in ("completed", "canceled"):
        return
    finish_batch_if_done(session=session, batch_id=batch_id)


def finish_batch_if_done(*, session: Session, batch_id: str) -> None:
    """Every job terminal: `completed` (or `canceled` after a cancel), and one webhook event."""
    row = session.execute(
        select(Batch.n_queued, Batch.n_running, Batch.status).where(Batch.id == batch_id)
    ).first()
    if row is None or row.n_queued or row.n_running or row.status in ("completed", "canceled"):
        return
    now = utcnow()
    final = "canceled" if row.status == "canceling" else "completed"
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


__all__ = ["job_changed", "batch_counts_moved", "finish_batch_if_done", "Job"]
