"""Housekeeping that makes lost messages and dead workers harmless.

Each pass locks the rows it touches with FOR UPDATE SKIP LOCKED, so several
dispatchers can sweep at once without doing the same work twice.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import timedelta

from celery import Celery
from sqlalchemy import delete, or_, select
from sqlalchemy.orm import Session, sessionmaker

from service.core.broker import publish, queue_depth
from service.core.db import session_scope
from service.core.settings import Settings
from service.core.tables import Job, Worker, utcnow
from service.jobs import live_workers
from service.transitions import job_changed

log = logging.getLogger(__name__)
BATCH = 500


@dataclass
class SweepReport:
    requeued: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    expired: list[str] = field(default_factory=list)
    republished: list[str] = field(default_factory=list)


def sweep_once(
    *, sessions: sessionmaker[Session], celery: Celery, settings: Settings
) -> SweepReport:
    report = SweepReport()
    now = utcnow()
    with session_scope(sessions) as session:
        # Running jobs whose worker stopped renewing the lease: requeue, or give up.
        for job in session.scalars(
            select(Job)
            .where(Job.status == "running", Job.lease_expires_at < now)
            .order_by(Job.id)
            .limit(BATCH)
            .with_for_update(skip_locked=True)
        ):
            if job.attempts >= settings.max_attempts:
                job.status, job.completed_at = "failed", now
                job.error = {
                    "code": "worker_lost",
                    "message": f"the job's worker was lost {job.attempts} times",
                }
                job_changed(session=session, job=job, previous="running")
                report.lost.append(job.id)
            elif job.cancel_requested:
                job.status, job.completed_at = "canceled", now
                job_changed(session=session, job=job, previous="running")
                report.expired.append(job.id)
            else:
                job.status, job.worker_id, job.lease_expires_at = "queued", None, None
                job.enqueued_at = None  # publish it again below
                job_changed(session=session, job=job, previous="running")
                report.requeued.append(job.id)
        # Queued jobs whose Cancel-After deadline passed never run.
        for job in session.scalars(
            select(Job)
            .where(Job.status == "queued", Job.deadline_at < now)
            .limit(BATCH)
            .with_for_update(skip_locked=True)
        ):
            job.status, job.completed_at = "canceled", now
            job.error = {
                "code": "deadline_exceeded",
                "message": "the job's Cancel-After deadline passed",
            }
            job_changed(session=session, job=job, previous="queued")
            report.expired.append(job.id)

    report.republished = _republish(sessions, celery, settings)
    with session_scope(sessions) as session:
        session.execute(delete(Worker).where(Worker.heartbeat_at < now - timedelta(hours=1)))
    if report.requeued or report.lost or report.expired or report.republished:
        log.info(
            "sweep: requeued=%d lost=%d expired=%d republished=%d",
            len(report.requeued),
            len(report.lost),
            len(report.expired),
            len(report.republished),
        )
    return report


def _republish(sessions: sessionmaker[Session], celery: Celery, settings: Settings) -> list[str]:
    """Wake workers for queued jobs whose message is known or presumed lost.

    A NULL `enqueued_at` means the publish failed (or a lease was recovered).
    An old `enqueued_at` alone is not proof of loss, since a long queue is slow, so
    those count only while the model's broker queue is empty. Messages are
    wake-ups that claim the head of the queue in SQL and pass the baton while
    work remains, so a model needs one per live worker, not one per job.
    """
    stale_before = utcnow() - timedelta(seconds=settings.republish_after_seconds)
    done: list[str] = []
    with session_scope(sessions) as session:
        rows = list(
            session.scalars(
                select(Job)
                .where(
                    Job.status == "queued",
                    or_(Job.enqueued_at.is_(None), Job.enqueued_at < stale_before),
                )
                .order_by(Job.lane, Job.id)
                .limit(BATCH)
                .with_for_update(skip_locked=True)
            )
        )
        by_model: dict[str, list[Job]] = {}
        for job in rows:
            by_model.setdefault(job.model, []).append(job)
        workers = live_workers(session=session, stale_after=3 * settings.worker_heartbeat_seconds)
        now = utcnow()
        for model, jobs in by_model.items():
            lost = any(job.enqueued_at is None for job in jobs)
            if not lost and queue_depth(celery, model) != 0:
                continue
            wakeups = [(job.id, model) for job in jobs[: max(1, workers.get(model, 0))]]
            if publish(celery, wakeups, settings.publish_max_retries):
                continue  # broker still away: try again next sweep
            for job in jobs:
                job.enqueued_at = now
                done.append(job.id)
    return done
