"""The dispatcher's periodic sweep: a thin caller of `service.lifecycle.sweep`."""

from __future__ import annotations

import logging

from celery import Celery
from sqlalchemy.orm import Session, sessionmaker

from service.core.db import session_scope
from service.core.settings import Settings
from service.core.tables import utcnow
from service.lifecycle import sweep
from service.lifecycle.sweep import SweepReport

log = logging.getLogger(__name__)


def sweep_once(
    *, sessions: sessionmaker[Session], celery: Celery, settings: Settings
) -> SweepReport:
    report = SweepReport()
    now = utcnow()
    with session_scope(sessions) as session:
        sweep.expire_leases(
            session=session, now=now, max_attempts=settings.max_attempts, report=report
        )
        sweep.expire_deadlines(session=session, now=now, report=report)
    # Its own transaction: the broker is called while its rows are locked.
    with session_scope(sessions) as session:
        report.republished = sweep.republish(session=session, celery=celery, settings=settings)
    with session_scope(sessions) as session:
        sweep.forget_dead_workers(session=session, now=now)
    if report:
        log.info(
            "sweep: requeued=%d lost=%d expired=%d republished=%d",
            len(report.requeued),
            len(report.lost),
            len(report.expired),
            len(report.republished),
        )
    return report
