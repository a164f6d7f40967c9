"""Waiting for a job without polling the database: its terminal status is pushed.

Every terminal transition writes a `status` event to the job's event log after
its commit (service/core/events.py), so a waiter blocks on the log (a Redis
XREAD BLOCK; in the embedded mode a short poll of one indexed table) and wakes
the moment the job ends. The order matters: the newest event id is taken
before the database is read, so a status committed after that read is always
after the id. The database is read again only every heartbeat period, as a
safety net for an event lost while the event store was away.

The wait holds no thread of its own: the API runs under gevent (docs/OPERATIONS.md),
where a blocked socket read parks a greenlet.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from sqlalchemy import select

from service.api.context import runtime
from service.core.events import START, STATUS, Event
from service.core.tables import Batch, Job
from service.lifecycle.status import BatchStatus, is_terminal

log = logging.getLogger(__name__)

# With the event store away, a waiter looks at the database this often instead.
DEGRADED_POLL_SECONDS = 1.0


def newest_id(stream: str) -> str:
    """The id to read after to see only what comes next (START if the store is away)."""
    try:
        return runtime().events.last_id(stream)
    except Exception as exc:  # noqa: BLE001 - the store is away: the database still answers
        runtime().events.warn("event store unavailable: %s", exc)
        return START


def read(stream: str, after: str, timeout: float) -> tuple[list[Event], bool]:
    """(events after `after`, whether the store answered), waiting up to `timeout` s."""
    try:
        return runtime().events.read(stream, after, timeout), True
    except ValueError:
        raise
    except Exception as exc:  # noqa: BLE001 - a broken store degrades to database checks
        runtime().events.warn("event store unavailable: %s", exc)
        time.sleep(min(timeout, DEGRADED_POLL_SECONDS))
        return [], False


def job_ended(job_id: str) -> bool:
    """One short read of the job's status, on a connection handed back at once."""
    with runtime().sessions() as session:
        status = session.scalar(select(Job.status).where(Job.id == job_id))
    return status is None or is_terminal(status)


def batch_ended(batch_id: str) -> bool:
    with runtime().sessions() as session:
        status = session.scalar(select(Batch.status).where(Batch.id == batch_id))
    return status is None or BatchStatus(status).is_terminal


def wait_until_ended(
    stream: str, deadline: float, ended: Callable[[], bool], after: str | None = None
) -> None:
    """Return once `stream`'s job ends (per the log, or `ended()`) or at `deadline`."""
    after = newest_id(stream) if after is None else after
    if ended():
        return
    recheck = runtime().settings.events_heartbeat_seconds
    while (left := deadline - time.monotonic()) > 0:
        events, _ = read(stream, after, min(left, recheck))
        if any(e.kind == STATUS for e in events):
            return
        if events:
            after = events[-1].id
        elif ended():  # the safety net, once per heartbeat period
            return
