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

# Periodic renewals come every lease/3 seconds, but at least this often: the database's
# progress (what GET /v1/jobs/{id} shows) stays this fresh.
RENEW_AT_MOST_EVERY = 5.0

# The keepers running in this process, for `nudge`.
_keepers: set[LeaseKeeper] = set()
_keepers_lock = threading.Lock()
# Pushes that found no keeper holding their job, by job id (monotonic time): a cancel
# can land between the claim's commit and the keeper's `add`. Kept this long.
_unheld: dict[str, float] = {}
UNHELD_SECONDS = 60.0


def nudge(job_ids: list[str]) -> int:
    """A cancel of these jobs was pushed: the keepers holding any of them renew now.

    Returns how many keepers were woken. A job no keeper holds yet is remembered a
    while: the keeper that takes it renews at once.
    """
    wanted = set(job_ids)
    with _keepers_lock:
        keepers = list(_keepers)
        now = time.monotonic()
        for job_id in [j for j, at in _unheld.items() if now - at > UNHELD_SECONDS]:
            del _unheld[job_id]
        # Noted before the keepers are asked: a keeper that takes one meanwhile sees it.
        _unheld.update(dict.fromkeys(wanted, now))
    woken, held = 0, set()
    for keeper in keepers:
        if mine := keeper.held(wanted):
            keeper.poke()
            woken += 1
            held |= mine
    with _keepers_lock:  # what a keeper holds needs no note
        for job_id in held:
            _unheld.pop(job_id, None)
    return woken


def _pushed_before(job_ids: list[str]) -> bool:
    """Whether a cancel of one of these jobs was pushed before its keeper held it."""
    with _keepers_lock:
        return any(_unheld.pop(job_id, None) is not None for job_id in job_ids)


class LeaseKeeper:
    """Renews leases every `lease/3` s, records progress, and collects cancel requests.

    It is also the runner's `RunControl`: `should_stop(i)` is a set lookup and a
    clock read, so the model loop can poll it every step without a DB round trip.
    Jobs are named by their index in `job_ids` or by their id. The continuous engine's
    set of jobs changes while it runs: `add` a job when it is admitted, `remove` it once
    it is finished, and the renewals follow.

    A cancel request is also pushed: `nudge(job_ids)` (service/workers/cancels.py calls
    it when the worker's stream says a job was canceled) makes the keeper holding one
    of them renew at once, and the renewal reads the flags from the database as ever.
    A lost push only means the request is read at the next periodic renewal.
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
        self.job_ids = list(job_ids)
        self.deadlines = list(deadlines)
        self._deadline_of = dict(zip(self.job_ids, self.deadlines, strict=True))
        self.progress: dict[str, float] = {job_id: 0.0 for job_id in job_ids}
        # The latest answer text of each understanding job (the live-events seam).
        self.texts: dict[str, str] = {}
        self.canceled: set[str] = set()
        self.lost: set[str] = set()
        self.live = LiveReporter(events, progress_seconds)
        # The renewal thread reads `progress` while the model loop adds and removes jobs.
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._poked = threading.Event()  # set by `poke`: renew now, not at the next period
        self._thread = threading.Thread(target=self._loop, name="lease-keeper", daemon=True)

    def _id(self, index_or_key: int | str) -> str:
        return index_or_key if isinstance(index_or_key, str) else self.job_ids[index_or_key]

    # The engine's changing set of jobs
    def add(self, job_id: str, deadline: datetime | None) -> None:
        with self._lock:
            if job_id not in self._deadline_of:
                self.job_ids.append(job_id)
                self.deadlines.append(deadline)
            self._deadline_of[job_id] = deadline
            self.progress[job_id] = 0.0
        if _pushed_before([job_id]):
            self.poke()

    def remove(self, job_id: str) -> None:
        """Stop renewing `job_id` (it is finished or handed back)."""
        with self._lock:
            self.progress.pop(job_id, None)
            self.texts.pop(job_id, None)
        self.live.forget(job_id)

    def held(self, job_ids: set[str]) -> set[str]:
        """Which of `job_ids` this keeper holds."""
        with self._lock:
            return job_ids & self.progress.keys()

    def poke(self) -> None:
        """Renew (and so read cancel flags) now, in the keeper's own thread."""
        self._poked.set()

    # RunControl
    def should_stop(self, index: int | str) -> bool:
        job_id = self._id(index)
        if job_id in self.canceled or job_id in self.lost:
            return True
        return self.deadline_passed(job_id)

    def report_progress(
        self,
        index: int | str,
        fraction: float,
        step: int | None = None,
        steps: int | None = None,
    ) -> None:
        job_id = self._id(index)
        fraction = max(0.0, min(1.0, float(fraction)))
        with self._lock:
            if job_id not in self.progress:
                return
            self.progress[job_id] = fraction
        self.live.progress(job_id, fraction, step, steps)

    def report_text(self, index: int | str, text: str) -> None:
        job_id = self._id(index)
        with self._lock:
            if job_id not in self.progress:
                return
            self.texts[job_id] = text
        self.live.text(job_id, text)

    def final_text(self, index: int | str, answer: str) -> None:
        """The row's answer is known: send the live text held back (see LiveReporter)."""
        self.live.final_text(self._id(index), answer)

    def deadline_passed(self, index: int | str) -> bool:
        deadline = self._deadline_of.get(self._id(index))
        return deadline is not None and utcnow() >= deadline

    # Thread
    def __enter__(self) -> LeaseKeeper:
        self._thread.start()
        with _keepers_lock:
            _keepers.add(self)
        if _pushed_before(self.job_ids):
            self.poke()
        return self

    def __exit__(self, *_exc: object) -> None:
        with _keepers_lock:
            _keepers.discard(self)
        self._stop.set()
        self._poked.set()
        self._thread.join(timeout=10)

    def _loop(self) -> None:
        interval = max(0.2, min(self.lease_seconds / 3, RENEW_AT_MOST_EVERY))
        due = time.monotonic() + interval
        while True:
            poked = self._poked.wait(max(0.0, due - time.monotonic()))
            if self._stop.is_set():
                return
            self._poked.clear()
            self.renew(pushed=poked)
            due = time.monotonic() + interval

    def renew(self, pushed: bool = False) -> None:
        with self._lock:
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
        if cancel - self.canceled:
            log.info("cancel requested for %s (%s); stopping at the next step",
                     sorted(cancel - self.canceled), "pushed" if pushed else "lease renewal")
        self.canceled |= cancel
        with self._lock:  # a job finished during the round trip is not lost, just done
            lost = {j for j in lost if j in self.progress}
        if lost:
            log.warning("lost the lease on %s; those jobs will be abandoned", sorted(lost))
        self.lost |= lost
        if time.monotonic() - started > self.lease_seconds / 3:
            log.warning("lease renewal took %.1fs", time.monotonic() - started)
