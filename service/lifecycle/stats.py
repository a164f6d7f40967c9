"""Read-only counts for GET /v1/models, /metrics and the sweeper."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service.core.tables import Job, Worker, utcnow
from service.lifecycle.status import JobStatus

RUN_SECONDS_BUCKETS = (0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600)


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


def run_seconds_histogram(*, session: Session) -> dict[tuple[str, str], list[float]]:
    """Per (model, task) of succeeded jobs: cumulative bucket counts, then sum, then count.

    One grouped scan at scrape time keeps every API process in agreement without shared
    state; it grows with the jobs table (fine to millions of rows at a 15 s scrape).
    """
    columns = [func.count().filter(Job.run_seconds <= b) for b in RUN_SECONDS_BUCKETS]
    rows = session.execute(
        select(Job.model, Job.task, *columns, func.sum(Job.run_seconds), func.count())
        .where(Job.status == JobStatus.SUCCEEDED, Job.run_seconds.is_not(None))
        .group_by(Job.model, Job.task)
    )
    return {(row[0], row[1]): [float(v or 0) for v in row[2:]] for row in rows}
