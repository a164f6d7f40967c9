"""The dispatcher's periodic sweep: a thin caller of `service.lifecycle.sweep`."""

from __future__ import annotations

import logging

from celery import Celery
from sqlalchemy.orm import Session, sessionmaker

from service.core.db import session_scope
from service.core.settings import Settings
from service.core.storage import Storage, StorageError, storage_from_settings
from service.core.tables import utcnow
from service.lifecycle import retention, sweep
from service.lifecycle.sweep import SweepReport

log = logging.getLogger(__name__)


def sweep_once(
    *,
    sessions: sessionmaker[Session],
    celery: Celery,
    settings: Settings,
    storage: Storage | None = None,
) -> SweepReport:
    """One pass of every housekeeping task; `storage` defaults to the settings' store."""
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
    if settings.retention_seconds > 0:
        storage = storage or storage_from_settings(settings)
        try:
            # Its own transaction too: storage is called while its rows are locked.
            with session_scope(sessions) as session:
                report.data_removed = retention.expire_data(
                    session=session,
                    storage=storage,
                    now=now,
                    retention_seconds=settings.retention_seconds,
                )
        except StorageError as exc:  # the rows stay unmarked; the next sweep tries again
            log.warning("retention: storage unavailable, nothing removed: %s", exc)
    if report:
        log.info(
            "sweep: requeued=%d lost=%d expired=%d republished=%d data_removed=%d",
            len(report.requeued),
            len(report.lost),
            len(report.expired),
            len(report.republished),
            len(report.data_removed),
        )
    return report
