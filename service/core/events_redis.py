"""The event log in Redis: one stream per job, XADD with an approximate MAXLEN, XREAD BLOCK.

Keys are `{broker_key_prefix}events:{id}`. A stream lives a day while its job is
live (a safety net should its end never be announced) and `events_ttl_seconds`
after the job ends. Writes come from the log's background thread only, with a
short socket timeout; reads block in the reader's own connection, so a waiter is
woken by Redis the moment an event lands instead of polling.
"""

from __future__ import annotations

import json
import os
import re
import time
from typing import Any

import redis

from service.core.events import START, Event, EventLog, encode
from service.core.settings import Settings

# A live job's stream outlives a lost `end` by this much at most.
LIVE_TTL_SECONDS = 24 * 3600
# The writer waits this long for any one Redis reply before dropping the batch.
WRITE_TIMEOUT = 1.0
# One XREAD BLOCK waits at most this long; longer reads loop. Blocking reads use a
# socket timeout just above it (a healthy blocked read never times out at the socket,
# a frozen Redis costs a waiter seconds, not minutes); other calls use WRITE_TIMEOUT.
READ_CHUNK = 5.0
# A blocked read holds its connection: one per waiting request or stream. (redis-py's
# default pool stops at 100 and then fails the read.)
MAX_READERS = 100_000
_ID = re.compile(r"[0-9]{1,20}(-[0-9]{1,20})?")  # ASCII: \d takes other scripts


class RedisEventLog(EventLog):
    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.url = settings.broker_url
        self.prefix = f"{settings.broker_key_prefix}events:"
        self._readers: dict[bool, redis.Redis] = {}
        self._reader_pid = -1
        self._writer_client: redis.Redis | None = None

    def key(self, job_id: str) -> str:
        return self.prefix + job_id

    # -- writing -----------------------------------------------------------------------
    def _reset_clients(self) -> None:
        self._writer_client = None

    def _write(self, batch: list[tuple[str, str, str, dict[str, Any]]]) -> None:
        if self._writer_client is None:
            self._writer_client = redis.Redis.from_url(
                self.url, socket_timeout=WRITE_TIMEOUT, socket_connect_timeout=WRITE_TIMEOUT)
        pipe = self._writer_client.pipeline(transaction=False)
        live_ttl = max(LIVE_TTL_SECONDS, self.ttl_seconds)
        for op, job_id, kind, data in batch:
            key = self.key(job_id)
            if op == "emit":
                pipe.xadd(key, {"k": kind, "d": encode(data)},
                          maxlen=self.max_len, approximate=True)
                pipe.expire(key, live_ttl)
            else:
                pipe.expire(key, self.ttl_seconds)
        pipe.execute()

    # -- reading -----------------------------------------------------------------------
    def _client(self, blocking: bool = False) -> redis.Redis:
        if self._reader_pid != os.getpid():
            self._readers, self._reader_pid = {}, os.getpid()
        if blocking not in self._readers:
            self._readers[blocking] = redis.Redis.from_url(
                self.url, decode_responses=True, socket_connect_timeout=WRITE_TIMEOUT,
                socket_timeout=READ_CHUNK + 2 if blocking else WRITE_TIMEOUT,
                max_connections=MAX_READERS)
        return self._readers[blocking]

    def valid_id(self, value: str) -> bool:
        return bool(_ID.fullmatch(value))

    def read(self, job_id: str, after: str | None, timeout: float) -> list[Event]:
        after = after or START
        if not self.valid_id(after):
            raise ValueError(f"not an event id: {after[:40]!r}")
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            left = deadline - time.monotonic()
            block = int(min(left, READ_CHUNK) * 1000)
            try:
                # BLOCK 0 would wait forever: a non-blocking read when no time is left.
                reply = self._client(block > 0).xread({self.key(job_id): after}, count=1000,
                                                      block=block if block > 0 else None)
            except redis.ResponseError as exc:  # e.g. an id past 2**64
                raise ValueError(f"not an event id: {after[:40]!r}") from exc
            if reply:
                return [_event(entry_id, fields) for entry_id, fields in reply[0][1]]
            if block <= 0 or time.monotonic() >= deadline:
                return []

    def last_id(self, job_id: str) -> str:
        newest = self._client().xrevrange(self.key(job_id), count=1)
        return newest[0][0] if newest else START


def _event(entry_id: str, fields: dict[str, str]) -> Event:
    return Event(entry_id, fields.get("k", ""), json.loads(fields.get("d", "{}")))
