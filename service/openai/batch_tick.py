"""The dispatcher's tick for OpenAI batches: what time alone changes, done with no reader.

OpenAI's batches move on their own, so a client that polls only `files.content`, or a
webhook consumer, sees them done. The dispatcher (service/entry/dispatcher.py) runs
`advance_due` every sweep interval on a thread of its own (`start_ticker`: writing a
large batch's files delays neither the sweeper nor webhooks). It takes the batches that
are due (records.due_records) and, each in its own transactions:

- past its completion window and not finished: cancels what is left and marks it
  `expired` (a conditional UPDATE: of two racers, one does it);
- all its jobs finished: writes the output and error files and marks it finalized
  (batch_output.finalize, under the record's row lock taken with SKIP LOCKED: a racer
  skips it and sees `finalizing`).

Reads of the batch do the same things (service/openai/routes/batches.py), so whichever
comes first does each once: never two output files, never a second cancel. One batch
that fails (its files cannot be stored, a bad row) is logged and tried again a few
ticks later (Ticker); the others go on. Nothing here imports Flask or service.api: the
dispatcher runs it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy.orm import Session, sessionmaker

from service.core.db import session_scope
from service.core.settings import Settings
from service.core.storage import Storage
from service.core.tables import utcnow
from service.lifecycle.status import BatchStatus
from service.openai import records
from service.openai.batch_output import finalize

log = logging.getLogger(__name__)

PER_TICK = 100  # batches looked at per tick; a backlog is worked off over a few ticks


@dataclass
class TickReport:
    expired: list[str] = field(default_factory=list)
    finalized: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.expired or self.finalized or self.failed)


def advance_due(
    *, sessions: sessionmaker[Session], storage: Storage, settings: Settings,
    now: datetime | None = None, limit: int = PER_TICK, skip: Collection[str] = (),
) -> TickReport:
    """Expire and finalize every OpenAI batch that is due (at most `limit` of them),
    except those in `skip` (batches that failed lately: Ticker)."""
    now = now or utcnow()
    report = TickReport()
    with session_scope(sessions) as session:
        due = records.due_records(session=session, now=now, limit=limit, skip=skip)
    for record_id in due:
        try:
            _advance(sessions, storage, settings, record_id, now, report)
        except Exception:  # one broken batch must not stop the others, nor the sweep
            log.exception("openai batch %s: could not advance it; trying again later",
                          record_id)
            report.failed.append(record_id)
    if report:
        log.info("openai batches: expired=%d finalized=%d failed=%d", len(report.expired),
                 len(report.finalized), len(report.failed))
    return report


def _advance(sessions: sessionmaker[Session], storage: Storage, settings: Settings,
             record_id: str, now: datetime, report: TickReport) -> None:
    with session_scope(sessions) as session:
        found = records.get_record(session=session, api_key_id=None, record_id=record_id)
        if found is None:
            return
        record, batch = found
        if records.expire_if_due(session=session, record=record, batch=batch, now=now):
            report.expired.append(record_id)
    # Its own transaction: storage is written while the record's row is locked.
    with session_scope(sessions) as session:
        found = records.get_record(session=session, api_key_id=None, record_id=record_id)
        if found is None:
            return
        record, batch = found
        if (batch is not None and record.finalized_at is None
                and BatchStatus(batch.status).is_terminal
                and finalize(session=session, storage=storage, settings=settings,
                             record_id=record_id)):
            report.finalized.append(record_id)


class Ticker:
    """Successive ticks, each batch that failed sitting out 2, 4, 8 ... (at most
    MAX_SIT_OUT) ticks before it is tried again: a batch that cannot be finished does not
    fill every tick's log, nor, with many of them, take every tick's `limit`."""

    MAX_SIT_OUT = 64

    def __init__(self, *, sessions: sessionmaker[Session], storage: Storage,
                 settings: Settings) -> None:
        self.sessions, self.storage, self.settings = sessions, storage, settings
        self.count = 0
        self.failing: dict[str, tuple[int, int]] = {}  # id -> (failures, next tick to try)

    def tick(self) -> TickReport:
        self.count += 1
        skip = {rid for rid, (_, at) in self.failing.items() if at > self.count}
        report = advance_due(sessions=self.sessions, storage=self.storage,
                             settings=self.settings, skip=skip)
        for rid in [rid for rid in self.failing if rid not in skip]:  # tried: done or not due
            if rid not in report.failed:
                del self.failing[rid]
        for rid in report.failed:
            failures = self.failing.get(rid, (0, 0))[0] + 1
            self.failing[rid] = (failures, self.count + min(2**failures, self.MAX_SIT_OUT))
        return report


def start_ticker(*, sessions: sessionmaker[Session], storage: Storage, settings: Settings,
                 stop: threading.Event) -> threading.Thread:
    """A Ticker's tick every JANUS_SWEEP_INTERVAL_SECONDS until `stop` is set."""
    ticker = Ticker(sessions=sessions, storage=storage, settings=settings)

    def loop() -> None:
        while not stop.is_set():
            try:
                ticker.tick()
            except Exception:  # an outage (one bad batch is kept to itself inside)
                log.exception("openai batch tick failed")
            stop.wait(settings.sweep_interval_seconds)

    thread = threading.Thread(target=loop, name="openai-batches", daemon=True)
    thread.start()
    return thread
