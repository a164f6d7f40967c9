"""Live job events: what a job reports while it runs, for the API's streams and waits.

Each job (and each batch) has one ordered event log. Workers `emit` (started,
progress, token deltas); every terminal status is announced after the commit
that made it (`announce_on_commit`, fed by the lifecycle hook), so a waiter is
woken by a push instead of polling the database. Readers `read` the events after
an id, blocking up to a timeout.

A worker has a stream of its own too (`worker_stream`): after a cancel of a running
job commits, its job id is written there (`push_cancels_on_commit`), and the worker
reads the cancel flag at once (service/workers/cancels.py). No client reads it.

Backends: a Redis stream per job when the broker is Redis (XADD with an
approximate MAXLEN, XREAD BLOCK, an expiry once the job ends); in the embedded
mode (no Redis) a SQL table read by short polling (service/core/events_sql.py).

`emit` never raises and never waits on the network: it appends to an in-process
queue that one background thread writes in pipelined batches. A hung or broken
event store costs a job nothing; events are dropped (with rate-limited warnings)
rather than slowing a decode step or failing a job.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import logging
import os
import threading
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import event as sa_event
from sqlalchemy.orm import Session, sessionmaker

from service.core.settings import Settings

log = logging.getLogger(__name__)

# Kinds. `status` is written for terminal transitions only; the API turns it into
# the `completed` event carrying the job object. `counts` nudges a batch's readers.
# `cancel` goes to a worker's own stream (`worker_stream`), never to a job's.
QUEUED, STARTED, PROGRESS, TOKEN, PREVIEW, STATUS, COUNTS, CANCEL = (
    "queued", "started", "progress", "token", "preview", "status", "counts", "cancel")

START = "0"  # the id before every event, for both backends
# Events waiting to be written; past this the oldest are dropped (a dead store
# must not grow a worker's memory).
MAX_PENDING = 100_000
# One write carries at most this many events.
WRITE_BATCH = 500


@dataclass(frozen=True)
class Event:
    id: str
    kind: str
    data: dict[str, Any]


class _RateLimitedWarning:
    """At most one warning per `every` seconds, saying how many were suppressed."""

    def __init__(self, every: float = 30.0) -> None:
        self.every, self.last, self.suppressed = every, -1e9, 0
        self.lock = threading.Lock()

    def __call__(self, message: str, *args: Any) -> None:
        with self.lock:
            now = time.monotonic()
            if now - self.last < self.every:
                self.suppressed += 1
                return
            skipped, self.suppressed, self.last = self.suppressed, 0, now
        log.warning(message + (f" ({skipped} similar warnings suppressed)" if skipped else ""),
                    *args)


class EventLog(ABC):
    """The event log of every job; one instance per process, safe across threads and forks."""

    def __init__(self, settings: Settings) -> None:
        self.max_len = settings.events_max_len
        self.ttl_seconds = settings.events_ttl_seconds
        self.warn = _RateLimitedWarning()
        self._pid = -1
        self._lock = threading.Lock()

    # -- writing (callers) ----------------------------------------------------------
    def emit(self, job_id: str, kind: str, data: dict[str, Any]) -> None:
        """Queue one event for `job_id`; returns at once, never raises."""
        self._put(("emit", job_id, kind, data))

    def end(self, job_id: str) -> None:
        """The job ended: its events expire `events_ttl_seconds` after this."""
        self._put(("end", job_id, "", {}))

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until everything queued so far is written (or dropped); False on timeout."""
        if self._pid != os.getpid():
            return True
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._queue or self._busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(left)
        return True

    def _put(self, item: tuple[str, str, str, dict[str, Any]]) -> None:
        try:
            if self._pid != os.getpid():
                self._start()
            with self._wake:
                if len(self._queue) >= MAX_PENDING:
                    self._queue.popleft()
                    self.warn("event log: %d events pending; dropping the oldest", MAX_PENDING)
                self._queue.append(item)
                self._wake.notify_all()  # flush() waits on the same condition
        except Exception as exc:  # noqa: BLE001 - emitting must never fail a job
            self.warn("event log: could not queue an event: %s", exc)

    def _start(self) -> None:
        """(Re)start the writer in this process: after a fork the parent's thread is gone."""
        with self._lock:
            if self._pid == os.getpid():
                return
            self._queue: deque[tuple[str, str, str, dict[str, Any]]] = deque()
            self._busy = False
            cond_lock = threading.Lock()
            self._wake = threading.Condition(cond_lock)
            self._idle = self._wake
            self._reset_clients()
            thread = threading.Thread(target=self._writer, name="event-log", daemon=True)
            thread.start()
            self._pid = os.getpid()
            atexit.register(self.flush, 2.0)

    def _writer(self) -> None:
        backoff = 0.0
        while True:
            with self._wake:
                while not self._queue:
                    self._busy = False
                    self._idle.notify_all()
                    self._wake.wait()
                batch = [self._queue.popleft() for _ in range(min(len(self._queue), WRITE_BATCH))]
                self._busy = True
            if backoff:
                # The store failed recently: what queued meanwhile is dropped, not retried,
                # so a dead store costs neither memory nor a flood of timeouts.
                time.sleep(backoff)
            try:
                self._write(batch)
                backoff = 0.0
            except Exception as exc:  # noqa: BLE001 - any store failure: drop, back off
                backoff = min(max(backoff * 2, 0.5), 10.0)
                self.warn("event log: %d event(s) dropped: %s", len(batch), exc)

    # -- backends --------------------------------------------------------------------
    def _reset_clients(self) -> None:
        """Forget connections inherited from a parent process."""
        return None

    @abstractmethod
    def _write(self, batch: list[tuple[str, str, str, dict[str, Any]]]) -> None:
        """Write ("emit", id, kind, data) and ("end", id, "", {}) items, in order."""

    @abstractmethod
    def read(self, job_id: str, after: str | None, timeout: float) -> list[Event]:
        """Events after `after` (None: from the first), waiting up to `timeout` s for one.

        Raises ValueError for an id this backend never issues (a hostile Last-Event-ID).
        """

    @abstractmethod
    def last_id(self, job_id: str) -> str:
        """The newest event's id, or START: read after it to see only what comes next."""

    @abstractmethod
    def valid_id(self, value: str) -> bool:
        """Whether `value` has the form of this backend's ids."""


def worker_stream(worker_id: str) -> str:
    """The stream a worker follows for pushed cancel requests of the jobs it holds.

    Hashed: a worker id (`model@host:pid`) can be longer than a stream name may be,
    and no job or batch id starts with "worker.", so no client can read it.
    """
    return "worker." + hashlib.sha256(worker_id.encode()).hexdigest()[:32]


def encode(data: dict[str, Any]) -> str:
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False)


def event_log(settings: Settings) -> EventLog:
    """Redis streams when the broker is Redis; otherwise (embedded mode) the database."""
    if settings.broker_url.startswith(("redis://", "rediss://")):
        from service.core.events_redis import RedisEventLog

        return RedisEventLog(settings)
    from service.core.events_sql import SqlEventLog

    return SqlEventLog(settings)


# -- announcing status changes after their commit ----------------------------------------
_PENDING = "janus_events_pending"


def note_after_commit(session: Session, stream_id: str, kind: str, data: dict[str, Any]) -> None:
    """Emit this event once `session` commits (dropped if it rolls back).

    Called by the lifecycle hook inside the changing transaction: a reader woken by
    the event then reads the committed row, never the one before it.
    """
    session.info.setdefault(_PENDING, []).append((stream_id, kind, data))


def push_cancels_on_commit(session: Session, held: Iterable[tuple[str, str | None]]) -> None:
    """Once `session` commits, tell each worker holding one of these (job id, worker id)
    to read its cancel flags now.

    A hint only: the flag in the jobs table is the request, and the worker's lease
    renewal reads it anyway; this makes it read it now rather than at the next renewal.
    """
    by_worker: dict[str, list[str]] = {}
    for job_id, worker_id in held:
        if worker_id:
            by_worker.setdefault(worker_id, []).append(job_id)
    for worker_id, job_ids in by_worker.items():
        note_after_commit(session, worker_stream(worker_id), CANCEL, {"jobs": job_ids})


def announce_on_commit(sessions: sessionmaker[Session], events: EventLog) -> None:
    """Make every session of `sessions` emit its noted events after each commit."""

    def committed(session: Session) -> None:
        pending = session.info.pop(_PENDING, None)
        for stream_id, kind, data in pending or ():
            events.emit(stream_id, kind, data)
            if kind == STATUS:
                events.end(stream_id)

    def ended(session: Session, transaction: Any) -> None:
        if transaction.parent is None:  # the outermost transaction: what is left never committed
            session.info.pop(_PENDING, None)

    sa_event.listen(sessions, "after_commit", committed)
    sa_event.listen(sessions, "after_transaction_end", ended)
