"""The event log in the database, for the embedded mode (SQLite, no Redis).

Readers poll every `POLL_SECONDS`: only this mode polls, and it serves one
machine. Rows carry an expiry: a day while the job is live, `events_ttl_seconds`
once it ends; expired rows are deleted by the writer about once a minute. A
stream longer than `events_max_len` loses its oldest rows as it grows.
"""

from __future__ import annotations

import re
import time
from datetime import timedelta
from typing import Any

from sqlalchemy import Engine, delete, func, insert, select, update

from service.core.db import make_db
from service.core.events import START, Event, EventLog
from service.core.settings import Settings
from service.core.tables import LiveEvent, utcnow

POLL_SECONDS = 0.2
LIVE_TTL = timedelta(days=1)
PURGE_EVERY_SECONDS = 60.0
_ID = re.compile(r"[0-9]{1,18}")  # ASCII: \d takes other scripts


class SqlEventLog(EventLog):
    def __init__(self, settings: Settings, db: Engine | None = None) -> None:
        super().__init__(settings)
        self.url = settings.database_url
        self._db = db
        self._written: dict[str, int] = {}  # rows written per stream by this process
        self._purged = 0.0

    @property
    def db(self) -> Engine:
        if self._db is None:
            self._db = make_db(self.url)
        return self._db

    def _reset_clients(self) -> None:
        self._written = {}

    # -- writing -----------------------------------------------------------------------
    def _write(self, batch: list[tuple[str, str, str, dict[str, Any]]]) -> None:
        now = utcnow()
        with self.db.begin() as conn:
            rows: list[dict[str, Any]] = []
            for op, stream, kind, data in batch:
                if op == "emit":
                    rows.append({"stream": stream, "kind": kind, "data": data,
                                 "expires_at": now + LIVE_TTL})
                    continue
                if rows:  # keep the order: this stream's events land before its end
                    conn.execute(insert(LiveEvent), rows)
                    rows = []
                conn.execute(update(LiveEvent).where(LiveEvent.stream == stream)
                             .values(expires_at=now + timedelta(seconds=self.ttl_seconds)))
            if rows:
                conn.execute(insert(LiveEvent), rows)
            self._trim(conn, [item[1] for item in batch if item[0] == "emit"])
            if time.monotonic() - self._purged > PURGE_EVERY_SECONDS:
                conn.execute(delete(LiveEvent).where(LiveEvent.expires_at < now))
                self._purged = time.monotonic()

    def _trim(self, conn: Any, streams: list[str]) -> None:
        """Every tenth of `max_len` rows, drop what lies past the newest `max_len`."""
        step = max(1, self.max_len // 10)
        for stream in streams:
            count = self._written.get(stream, 0) + 1
            self._written[stream] = count
            if count > self.max_len and count % step == 0:
                cut = conn.execute(
                    select(LiveEvent.id).where(LiveEvent.stream == stream)
                    .order_by(LiveEvent.id.desc()).offset(self.max_len).limit(1)
                ).scalar()
                if cut is not None:
                    conn.execute(delete(LiveEvent).where(LiveEvent.stream == stream,
                                                         LiveEvent.id <= cut))
        if len(self._written) > 10_000:  # forget old streams; a trim may come late, no harm
            self._written.clear()

    # -- reading -----------------------------------------------------------------------
    def valid_id(self, value: str) -> bool:
        return bool(_ID.fullmatch(value))

    def read(self, job_id: str, after: str | None, timeout: float) -> list[Event]:
        after = after or START
        if not self.valid_id(after):
            raise ValueError(f"not an event id: {after[:40]!r}")
        query = (
            select(LiveEvent.id, LiveEvent.kind, LiveEvent.data)
            .where(LiveEvent.stream == job_id, LiveEvent.id > int(after))
            .order_by(LiveEvent.id)
            .limit(1000)
        )
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            with self.db.connect() as conn:
                rows = conn.execute(query).all()
            if rows:
                return [Event(str(r.id), r.kind, dict(r.data)) for r in rows]
            left = deadline - time.monotonic()
            if left <= 0:
                return []
            time.sleep(min(POLL_SECONDS, left))

    def last_id(self, job_id: str) -> str:
        with self.db.connect() as conn:
            newest = conn.execute(
                select(func.max(LiveEvent.id)).where(LiveEvent.stream == job_id)
            ).scalar()
        return str(newest) if newest is not None else START
