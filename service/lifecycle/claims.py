"""A worker's side of a job: claim, renew the lease, finish, or hand it back.

Each is a conditional UPDATE through `service.lifecycle.hook.transition`, so two
processes racing on one job (a duplicate delivery, a sweeper and a worker) can
never both win.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from service.core.tables import Job, utcnow
from service.lifecycle.hook import transition
from service.lifecycle.status import JobStatus


def claim_next(
    *, session: Session, model: str, worker_id: str, lease_seconds: float, limit: int
) -> list[Job]:
    """Claim the best queued job of `model` and up to `limit - 1` more of the same task.

    A broker message is only a wake-up: whichever job it names, the worker takes
    the head of the queue as Postgres orders it (interactive lane first, then
    oldest). Every queued job has a message of its own, so each message claims
    at most one job's worth of work and none is left behind; a message whose
    job already ran finds nothing, or another job, and no harm is done.

    A job that has been claimed before (`attempts > 0`) lost its worker, perhaps
    because it killed it: it runs alone and never joins another job's batch, so a
    poison job uses up its own attempts and no one else's.
    """
    queued = select(Job.id, Job.task, Job.attempts).where(
        Job.model == model, Job.status == JobStatus.QUEUED, Job.cancel_requested.is_(False)
    )
    head = session.execute(
        queued.order_by(Job.lane, Job.id).limit(1).with_for_update(skip_locked=True)
    ).first()
    if head is None:
        return []
    ids = [head.id]
    if limit > 1 and head.attempts == 0:
        ids += session.scalars(
            select(Job.id)
            .where(
                Job.model == model,
                Job.status == JobStatus.QUEUED,
                Job.task == head.task,
                Job.cancel_requested.is_(False),
                Job.attempts == 0,
                Job.id != head.id,
            )
            .order_by(Job.lane, Job.id)
            .limit(limit - 1)
            .with_for_update(skip_locked=True)
        ).all()
    now = utcnow()
    rows = transition(
        session=session,
        previous=JobStatus.QUEUED,
        where=[Job.id.in_(ids)],
        values={
            "status": JobStatus.RUNNING,
            "worker_id": worker_id,
            "lease_expires_at": now + timedelta(seconds=lease_seconds),
            "attempts": Job.attempts + 1,
            "started_at": func.coalesce(Job.started_at, now),
            "progress": 0.0,
        },
    )
    return sorted(rows, key=lambda job: (job.lane, job.id))


def has_queued(*, session: Session, model: str) -> bool:
    return (
        session.scalar(
            select(Job.id).where(Job.model == model, Job.status == JobStatus.QUEUED).limit(1)
        )
        is not None
    )


def renew_leases(
    *,
    session: Session,
    worker_id: str,
    lease_seconds: float,
    progress: dict[str, float],
) -> tuple[set[str], set[str]]:
    """Extend this worker's leases; returns (ids to cancel, ids this worker no longer owns)."""
    now = utcnow()
    held: set[str] = set()
    cancel: set[str] = set()
    for job_id, fraction in progress.items():
        row = session.execute(
            update(Job)
            .where(
                Job.id == job_id, Job.worker_id == worker_id, Job.status == JobStatus.RUNNING
            )
            .values(lease_expires_at=now + timedelta(seconds=lease_seconds), progress=fraction)
            .returning(Job.id, Job.cancel_requested, Job.deadline_at)
        ).first()
        if row is None:
            continue
        held.add(row.id)
        if row.cancel_requested:
            cancel.add(row.id)
    return cancel, set(progress) - held


def finish(
    *,
    session: Session,
    job_id: str,
    worker_id: str,
    status: JobStatus,
    output: dict[str, Any] | None = None,
    error: dict[str, Any] | None = None,
    run_seconds: float | None = None,
) -> bool:
    """Set the one terminal state, only if this worker still owns the running job."""
    assert JobStatus(status).is_terminal
    return _leave_running(
        session,
        job_id,
        worker_id,
        {
            "status": status,
            "output": output,
            "error": error,
            "completed_at": utcnow(),
            "lease_expires_at": None,
            "progress": 1.0 if status == JobStatus.SUCCEEDED else Job.progress,
            "run_seconds": run_seconds,
        },
    )


def release(*, session: Session, job_id: str, worker_id: str) -> bool:
    """Hand a running job back to the queue after a transient fault."""
    return _leave_running(
        session,
        job_id,
        worker_id,
        {
            "status": JobStatus.QUEUED,
            "worker_id": None,
            "lease_expires_at": None,
            "enqueued_at": None,
        },
    )


def _leave_running(session: Session, job_id: str, owner: str, values: dict[str, Any]) -> bool:
    """Move a running job that `owner` still holds to another status."""
    moved = transition(
        session=session,
        previous=JobStatus.RUNNING,
        where=[Job.id == job_id, Job.worker_id == owner],
        values=values,
    )
    return bool(moved)
