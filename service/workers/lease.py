"""Keeping a running batch's leases alive, and telling the model loop when to stop a job."""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime

from sqlalchemy.orm import Session, sessionmaker

from service.core.db import session_scope
from service.core.events import EventLog
from service.core.tables import utcnow
from service.lifecycle import claims
from service.workers.live import LiveReporter

log = logging.getLogger(__name__)


class LeaseKeeper:
    """Renews leases every `lease/3` s, records progress, and collects cancel requests.

    It is also the runner's `RunControl`: `should_stop(i)` is a set lookup and a
    clock read, so the model loop can poll it every step without a DB round trip.
    """

    def __init__(
        self,
        sessions: sessionmaker[Session],
        worker_id: str,
        lease_seconds: float,
        job_ids: list[str],
        deadlines: list[datetime | None],
        events: EventLog | None = None,
        progress_seconds: float = 0.25,
    ) -> None:
        self.sessions = sessions
        self.worker_id = worker_id
        self.lease_seconds = lease_seconds
        self.job_ids = job_ids
        self.deadlines = deadlines
        self.progress: dict[str, float] = {job_id: 0.0 for job_id in job_ids}
        self.canceled: set[str] = set()
        self.lost: set[str] = set()
        self.live = LiveReporter(events, job_ids, progress_seconds)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="lease-keeper", daemon=True)

    # RunControl
    def should_stop(self, index: int) -> bool:
        job_id = self.job_ids[index]
        if job_id in self.canceled or job_id in self.lost:
            return True
        deadline = self.deadlines[index]
        return deadline is not None and utcnow() >= deadline

    def report_progress(
        self, index: int, fraction: float, step: int | None = None, steps: int | None = None
    ) -> None:
        fraction = max(0.0, min(1.0, float(fraction)))
        self.progress[self.job_ids[index]] = fraction
        self.live.progress(index, fraction, step, steps)

    def report_text(self, index: int, text_so_far: str) -> None:
        self.live.text(index, text_so_far)

    def deadline_passed(self, index: int) -> bool:
        deadline = self.deadlines[index]
        return deadline is not None and utcnow() >= deadline

    # Thread
    def __enter__(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _loop(self) -> None:
        interval = max(0.2, min(self.lease_seconds / 3, 5.0))
        while not self._stop.wait(interval):
            self.renew()

    def renew(self) -> None:
        pending = {j: p for j, p in self.progress.items() if j not in self.lost}
        if not pending:
            return
        started = time.monotonic()
        try:
            with session_scope(self.sessions) as session:
                cancel, lost = claims.renew_leases(
                    session=session,
                    worker_id=self.worker_id,
                    lease_seconds=self.lease_seconds,
                    progress=pending,
                )
        except Exception as exc:  # the DB may be briefly away; the lease has slack
            log.warning("lease renewal failed: %s", exc)
            return
        self.canceled |= cancel
        if lost:
            log.warning("lost the lease on %s; those jobs will be abandoned", sorted(lost))
        self.lost |= lost
        if time.monotonic() - started > self.lease_seconds / 3:
            log.warning("lease renewal took %.1fs", time.monotonic() - started)
