"""The dispatcher's webhook loop: claim what is due, deliver on a small thread pool.

The loop claims only as many events as it has idle threads, so a claimed
event never waits in a queue while its lease runs down, and one slow receiver
occupies one thread, not the whole dispatcher.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor

from sqlalchemy.orm import Session, sessionmaker

from service.core.db import session_scope
from service.core.settings import Settings
from service.core.storage import Storage, storage_from_settings
from service.core.tables import utcnow
from service.webhooks.delivery import Claimed, attempt, claim_due, record

log = logging.getLogger(__name__)


class WebhookRunner:
    def __init__(
        self,
        settings: Settings,
        sessions: sessionmaker[Session],
        storage: Storage | None = None,
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self.storage = storage or storage_from_settings(settings)
        self.size = settings.webhook_concurrency
        self._busy = 0
        self._cond = threading.Condition()

    def _deliver(self, claimed: Claimed) -> None:
        try:
            attempted_at = utcnow()
            outcome = attempt(claimed, settings=self.settings, storage=self.storage)
            with session_scope(self.sessions) as session:
                current = record(
                    session=session, claimed=claimed, outcome=outcome, attempted_at=attempted_at
                )
            log.info(
                "webhook %s %s try %d: %s%s",
                claimed.id,
                claimed.type,
                claimed.attempt,
                outcome.status_code or "-",
                f" ({outcome.error})" if outcome.error else "",
            )
            if not current:
                log.warning("webhook %s: claim was taken over while delivering", claimed.id)
        except Exception:  # the DB may blip; the lease brings the event back later
            log.exception("webhook %s: could not record the attempt", claimed.id)
        finally:
            with self._cond:
                self._busy -= 1
                self._cond.notify_all()

    def poll_once(self, pool: ThreadPoolExecutor) -> int:
        """Claim up to the number of idle threads and start them; returns how many."""
        with self._cond:
            free = self.size - self._busy
        if free <= 0:
            return 0
        with session_scope(self.sessions) as session:
            claimed = claim_due(session=session, settings=self.settings, limit=free)
        for item in claimed:
            with self._cond:
                self._busy += 1
            pool.submit(self._deliver, item)
        return len(claimed)

    def run(self, stop: threading.Event) -> None:
        poll = self.settings.webhook_poll_seconds
        with ThreadPoolExecutor(self.size, thread_name_prefix="webhook") as pool:
            while not stop.is_set():
                try:
                    started = self.poll_once(pool)
                except Exception:  # a DB blip must not end the loop
                    log.exception("webhook claim failed")
                    started = 0
                with self._cond:
                    if self._busy >= self.size or not started:
                        # Full: wake when a thread frees up. Idle: wake at the next poll.
                        self._cond.wait(poll)
            log.info("webhook loop stopping; waiting for %d in-flight deliveries", self._busy)
        # Leaving the `with` waited for in-flight attempts, bounded by the HTTP timeout.


def start_webhook_runner(
    settings: Settings, sessions: sessionmaker[Session], stop: threading.Event
) -> threading.Thread:
    runner = WebhookRunner(settings, sessions)
    thread = threading.Thread(target=runner.run, args=(stop,), name="webhooks", daemon=True)
    thread.start()
    log.info(
        "webhook delivery started: %d threads, polling every %.1fs",
        runner.size,
        settings.webhook_poll_seconds,
    )
    return thread
