"""Job rows: every read and state change, each taking the session as a keyword.

State changes are conditional UPDATEs so that two processes racing on one job
(a duplicate delivery, a sweeper and a worker) can never both win.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.orm import Session

from service.core.tables import TERMINAL, Job, Worker, utcnow
from service.transitions import job_changed


def get_job(*, session: Session, api_key_id: str, job_id: str) -> Job | None:
    return session.scalar(select(Job).where(Job.id == job_id, Job.api_key_id == api_key_id))


def find_by_idempotency_key(*, session: Session, api_key_id: str, key: str) -> Job | None:
    return session.scalar(
        select(Job).where(Job.api_key_id == api_key_id, Job.idempotency_key == key)
    )


def list_jobs(
    *,
    session: Session,
    api_key_id: str,
    limit: int,
    after: str | None = None,
    status: str | None = None,
    model: str | None = None,
    batch_id: str | None = None,
) -> tuple[list[Job], bool]:
    """Newest first; `after` is the id of the last job of the previous page."""
    query = select(Job).where(Job.api_key_id == api_key_id)
    if status:
        query = query.where(Job.status == status)
    if model:
        query = query.where(Job.model == model)
    if batch_id:
        query = query.where(Job.batch_id == batch_id)
    if after:
        query = query.where(Job.id < after)
    rows = list(session.scalars(query.order_by(Job.id.desc()).limit(limit + 1)))
    return rows[:limit], len(rows) > limit


def queue_position(*, session: Session, job: Job) -> int:
    """How many queued jobs of the same model a worker will take before this one."""
    ahead = or_(Job.lane < job.lane, and_(Job.lane == job.lane, Job.id < job.id))
    return (
        session.scalar(
            select(func.count())
            .select_from(Job)
            .where(Job.model == job.model, Job.status == "queued", ahead)
        )
        or 0
    )


def request_cancel(*, session: Session, job: Job) -> Job:
    """Queued: canceled at once. Running: flagged, the worker stops at its next step."""
    now = utcnow()
    if job.status == "queued":
        session.execute(
            update(Job)
            .where(Job.id == job.id, Job.status == "queued")
            .values(status="canceled", completed_at=now, cancel_requested=True)
        )
    elif job.status == "running":
        session.execute(update(Job).where(Job.id == job.id).values(cancel_requested=True))
    session.flush()
    session.refresh(job)
    if job.status == "canceled":
        job_changed(session=session, job=job, previous="queued")
    return job


def mark_unpublished(*, session: Session, job_ids: list[str]) -> None:
    """The broker refused the message: let the sweeper publish it as soon as it can."""
    session.execute(
        update(Job).where(Job.id.in_(job_ids), Job.status == "queued").values(enqueued_at=None)
    )


def _claim_values(worker_id: str, lease_seconds: float) -> dict[str, Any]:
    now = utcnow()
    return {
        "status": "running",
        "worker_id": worker_id,
        "lease_expires_at": now + timedelta(seconds=lease_seconds),
        "attempts": Job.attempts + 1,
        "started_at": func.coalesce(Job.started_at, now),
        "progress": 0.0,
    }


def claim_next(
    *, session: Session, model: str, worker_id: str, lease_seconds: float, limit: int
) -> list[Job]:
    """Claim the best queued job of `model` and up to `limit - 1` more of the same task.

    A broker message is only a wake-up: whichever job it names, the worker takes
    the head of the queue as Postgres orders it (interactive lane first, then
    oldest). Every queued job has a message of its own, so each message claims
    at most one job's worth of work and none is left behind; a message whose
    job already ran finds nothing, or another job, and no harm is done.
    """
    queued = select(Job.id, Job.task).where(
        Job.model == model, Job.status == "queued", Job.cancel_requested.is_(False)
    )
    head = session.execute(
        queued.order_by(Job.lane, Job.id).limit(1).with_for_update(skip_locked=True)
    ).first()
    if head is None:
        return []
    ids = [head.id]
    if limit > 1:
        ids += session.scalars(
            select(Job.id)
            .where(
                Job.model == model,
                Job.status == "queued",
                Job.task == head.task,
                Job.cancel_requested.is_(False),
                Job.id != head.id,
            )
            .order_by(Job.lane, Job.id)
            .limit(limit - 1)
            .with_for_update(skip_locked=True)
        ).all()
    rows = session.scalars(
        update(Job)
        .where(Job.id.in_(ids), Job.status == "queued")
        .values(**_claim_values(worker_id, lease_seconds))
        .returning(Job)
        # Fresh values even if the row is already in this session.
        .execution_options(synchronize_session=False, populate_existing=True)
    ).all()
    for job in rows:
        job_changed(session=session, job=job, previous="queued", first_start=job.attempts == 1)
    return sorted(rows, key=lambda job: (job.lane, job.id))


def has_queued(*, session: Session, model: str) -> bool:
    return (
        session.scalar(select(Job.id).where(Job.model == model, Job.status == "queued").limit(1))
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
            .where(Job.id == job_id, Job.worker_id == worker_id, Job.status == "running")
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
    status: str,
    output: dict[str, Any] | None = None,
    error: dict[str, Any] | None = None,
    run_seconds: float | None = None,
) -> bool:
    """Set the one terminal state, only if this worker still owns the running job."""
    assert status in TERMINAL
    now = utcnow()
    return _leave_running(
        session,
        job_id,
        worker_id,
        {
            "status": status,
            "output": output,
            "error": error,
            "completed_at": now,
            "lease_expires_at": None,
            "progress": 1.0 if status == "succeeded" else Job.progress,
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
            "status": "queued",
            "worker_id": None,
            "lease_expires_at": None,
            "enqueued_at": None,
        },
    )


def _leave_running(session: Session, job_id: str, owner: str, values: dict[str, Any]) -> bool:
    """Move a running job that `owner` still holds to another status, through the hook."""
    job = session.scalar(
        update(Job)
        .where(Job.id == job_id, Job.worker_id == owner, Job.status == "running")
        .values(**values)
        .returning(Job)
        # Fresh values even if the row is already in this session.
        .execution_options(synchronize_session=False, populate_existing=True)
    )
    if job is None:
        return False
    job_changed(session=session, job=job, previous="running")
    return True


def fail_queued(*, session: Session, job_id: str, status: str, error: dict[str, Any]) -> bool:
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == "queued")
        .values(status=status, error=error, completed_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1


def counts_by_model(*, session: Session) -> dict[tuple[str, str], int]:
    rows = session.execute(
        select(Job.model, Job.status, func.count()).group_by(Job.model, Job.status)
    )
    return {(model, status): n for model, status, n in rows}


def live_workers(*, session: Session, stale_after: float) -> dict[str, int]:
    since: datetime = utcnow() - timedelta(seconds=stale_after)
    rows = session.execute(
        select(Worker.model, func.count())
        .where(Worker.heartbeat_at >= since)
        .group_by(Worker.model)
    )
    return {model: n for model, n in rows}


RUN_SECONDS_BUCKETS = (0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600)


def run_seconds_histogram(*, session: Session) -> dict[tuple[str, str], list[float]]:
    """Per (model, task) of succeeded jobs: cumulative bucket counts, then sum, then count.

    One grouped scan at scrape time keeps every API process in agreement without shared
    state; it grows with the jobs table (fine to millions of rows at a 15 s scrape).
    """
    columns = [func.count().filter(Job.run_seconds <= b) for b in RUN_SECONDS_BUCKETS]
    rows = session.execute(
        select(Job.model, Job.task, *columns, func.sum(Job.run_seconds), func.count())
        .where(Job.status == "succeeded", Job.run_seconds.is_not(None))
        .group_by(Job.model, Job.task)
    )
    return {(row[0], row[1]): [float(v or 0) for v in row[2:]] for row in rows}
