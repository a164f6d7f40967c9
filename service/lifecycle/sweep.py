"""Housekeeping that makes lost messages and dead workers harmless.

Each pass locks the rows it touches with FOR UPDATE SKIP LOCKED, so several
dispatchers can sweep at once without doing the same work twice. Status
changes go through the hook like any other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from celery import Celery
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from service.core.broker import publish, queue_depth
from service.core.settings import Settings
from service.core.tables import Job, Worker, utcnow
from service.lifecycle.hook import transition
from service.lifecycle.stats import live_workers
from service.lifecycle.status import JobStatus, deadline_error

BATCH = 500  # rows per pass: a backlog is worked off over a few sweeps


@dataclass
class SweepReport:
    requeued: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    expired: list[str] = field(default_factory=list)
    republished: list[str] = field(default_factory=list)
    data_removed: list[str] = field(default_factory=list)  # past retention (retention.py)

    def __bool__(self) -> bool:
        return bool(
            self.requeued or self.lost or self.expired or self.republished or self.data_removed
        )


def expire_leases(
    *, session: Session, now: datetime, max_attempts: int, report: SweepReport
) -> None:
    """Running jobs whose worker stopped renewing the lease: requeue, cancel, or give up."""
    rows = session.execute(
        select(Job.id, Job.attempts, Job.cancel_requested)
        .where(Job.status == JobStatus.RUNNING, Job.lease_expires_at < now)
        .order_by(Job.id)
        .limit(BATCH)
        .with_for_update(skip_locked=True)
    ).all()
    for row in rows:
        if row.attempts >= max_attempts:
            values = {
                "status": JobStatus.FAILED,
                "completed_at": now,
                "error": {
                    "code": "worker_lost",
                    "message": f"the job's worker was lost {row.attempts} times",
                },
            }
            outcome = report.lost
        elif row.cancel_requested:
            values = {"status": JobStatus.CANCELED, "completed_at": now}
            outcome = report.expired
        else:
            # enqueued_at NULL: `republish` wakes a worker for it in this same sweep.
            values = {
                "status": JobStatus.QUEUED,
                "worker_id": None,
                "lease_expires_at": None,
                "enqueued_at": None,
            }
            outcome = report.requeued
        if transition(
            session=session, previous=JobStatus.RUNNING, where=[Job.id == row.id], values=values
        ):
            outcome.append(row.id)


def expire_deadlines(*, session: Session, now: datetime, report: SweepReport) -> None:
    """Queued jobs whose Cancel-After deadline passed never run."""
    ids = session.scalars(
        select(Job.id)
        .where(Job.status == JobStatus.QUEUED, Job.deadline_at < now)
        .limit(BATCH)
        .with_for_update(skip_locked=True)
    ).all()
    if not ids:
        return
    moved = transition(
        session=session,
        previous=JobStatus.QUEUED,
        where=[Job.id.in_(ids)],
        values={
            "status": JobStatus.CANCELED,
            "completed_at": now,
            "error": deadline_error(),
        },
    )
    report.expired += [job.id for job in moved]


def republish(*, session: Session, celery: Celery, settings: Settings) -> list[str]:
    """Wake workers for queued jobs whose message is known or presumed lost.

    A NULL `enqueued_at` means the publish failed (or a lease was recovered).
    An old `enqueued_at` alone is not proof of loss, since a long queue is slow, so
    those count only while the model's broker queue is empty. Messages are
    wake-ups that claim the head of the queue in SQL and pass the baton while
    work remains, so a model needs one per live worker, not one per job.

    Lost rows are read first, and stale rows per model: a long, healthy queue of one
    model (old rows, messages waiting) must not fill a pass and hide another model's
    lost rows behind it sweep after sweep.
    """
    queued = select(Job).where(Job.status == JobStatus.QUEUED)
    by_model: dict[str, list[Job]] = {}
    for job in session.scalars(
        queued.where(Job.enqueued_at.is_(None))
        .order_by(Job.lane, Job.id)
        .limit(BATCH)
        .with_for_update(skip_locked=True)
    ):
        by_model.setdefault(job.model, []).append(job)
    stale = Job.enqueued_at < utcnow() - timedelta(seconds=settings.republish_after_seconds)
    for model in session.scalars(
        select(Job.model).where(Job.status == JobStatus.QUEUED, stale).distinct()
    ).all():
        # A model with a lost row gets a wake-up anyway; the baton reaches its stale rows.
        if model in by_model or queue_depth(celery, model) != 0:
            continue
        rows = session.scalars(
            queued.where(Job.model == model, stale)
            .order_by(Job.lane, Job.id)
            .limit(BATCH)
            .with_for_update(skip_locked=True)
        ).all()
        if rows:
            by_model[model] = list(rows)
    workers = live_workers(session=session, stale_after=3 * settings.worker_heartbeat_seconds)
    now = utcnow()
    done: list[str] = []
    for model, jobs in by_model.items():
        wakeups = [(job.id, model) for job in jobs[: max(1, workers.get(model, 0))]]
        if publish(celery, wakeups, settings.publish_max_retries):
            continue  # broker still away: try again next sweep
        for job in jobs:
            job.enqueued_at = now  # not a status: the row is locked, the flush writes it
            done.append(job.id)
    return done


def forget_dead_workers(*, session: Session, now: datetime) -> None:
    """Worker rows silent for an hour: their process is gone for good."""
    session.execute(delete(Worker).where(Worker.heartbeat_at < now - timedelta(hours=1)))
