"""Cancel requests pushed to this worker, so a running job stops within a step.

A cancel commits `cancel_requested` in the jobs table; after the commit the API (or a
batch cancel, or the dispatcher expiring an OpenAI batch) writes the job ids to the
stream of the worker holding them (`service.core.events.worker_stream`): a Redis
stream when the broker is Redis, the live-events table in the embedded mode. One
thread per worker process follows that stream and nudges the `LeaseKeeper` holding a
named job, which renews at once and so reads the flag from the database, the same read
as its periodic renewal. The push is only a hint: a message lost (Redis away, this
worker restarting, a read failing) means the flag is read at the next periodic
renewal (every lease/3 s, at most 5 s), as it was before pushes existed.
"""

from __future__ import annotations

import logging
import threading

from service.core.events import CANCEL, EventLog, worker_stream
from service.workers import lease

log = logging.getLogger(__name__)

# One blocking read waits at most this long (Redis XREAD BLOCK; the SQL log polls
# within it every 0.2 s); then the thread checks whether it should stop.
READ_SECONDS = 5.0
# After a failed read, wait this long before the next (doubling, up to the maximum).
BACKOFF_SECONDS, BACKOFF_MAX_SECONDS = 0.5, 10.0


class CancelWatch:
    """Follows one worker's stream in a daemon thread and nudges its lease keepers."""

    def __init__(self, events: EventLog, worker_id: str) -> None:
        self.events = events
        self.stream = worker_stream(worker_id)
        self.pushed = 0  # cancel messages read
        self.ready = threading.Event()  # set once the stream is followed: later pushes arrive
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cancel-watch", daemon=True)

    def start(self) -> CancelWatch:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=READ_SECONDS + 2)

    def _run(self) -> None:
        after: str | None = None  # None: not yet known where the stream ends
        backoff = 0.0
        while not self._stop.is_set():
            try:
                if after is None:
                    # Only what comes next: a worker id can repeat (pid 1 in a container),
                    # and an old message would only cost a needless renewal anyway.
                    after = self.events.last_id(self.stream)
                    self.ready.set()
                got = self.events.read(self.stream, after, READ_SECONDS)
            except Exception as exc:  # noqa: BLE001 - Redis away: periodic renewals carry on
                backoff = min(max(backoff * 2, BACKOFF_SECONDS), BACKOFF_MAX_SECONDS)
                self.events.warn("cancel pushes unavailable (%s); cancels are read at lease "
                                 "renewal until they are back", exc)
                self._stop.wait(backoff)
                continue
            backoff = 0.0
            for event in got:
                after = event.id
                if event.kind != CANCEL:
                    continue
                job_ids = [str(j) for j in event.data.get("jobs", [])]
                self.pushed += 1
                woken = lease.nudge(job_ids)
                log.debug("cancel pushed for %s: %d keeper(s) woken", job_ids, woken)
