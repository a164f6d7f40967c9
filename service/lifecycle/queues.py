"""Queue positions without counting the queue: queued jobs per model and lane, kept.

What `queue_position` means: how many queued jobs of the same model a worker takes
before this one. Workers take a model's queued jobs interactive lane first (single
jobs, lane 0), then batch lines (lane 1), oldest first within a lane (ORDER BY lane,
id: service/lifecycle/claims.py). So a job's position is every queued job of its
model in a lane served before its own, plus the queued jobs of its own lane with a
smaller id. It is read from one consistent snapshot: a job submitted at the same
moment may or may not be counted yet. A worker also takes later jobs of the same
task along in its batch, so the position is how many go first, not how long it waits.

The cost: counting the rows ahead reads every one of them (with their heap pages,
for visibility), so it grew with the queue, on every submit. Instead `queue_counts`
holds how many jobs are queued per (model, lane), changed in the same transaction
as the jobs themselves: +1 in the submit's own INSERT statement, +n when a batch
is created, and in the lifecycle hook (the only writer of job status) for every job
that enters or leaves `queued`. Then:

- at submit, the new job is the last of its lane: its position is the count of its
  lane and the lanes before it, read in the INSERT's own statement (one round trip,
  the queue's length does not matter);
- later (GET, lists), the jobs behind it in its lane are subtracted from that count:
  reading those rows costs what is behind it, not what is ahead (beyond a few
  hundred behind, counting ahead is cheaper again and that is done instead).

Both are exact for the snapshot they read. The count is split over a few shard rows
per (model, lane): each writer adds to a random one, so concurrent submits rarely
queue for one row lock held through a commit's flush.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from typing import Any

from sqlalchemy import (
    JSON,
    Connection,
    Engine,
    and_,
    bindparam,
    delete,
    func,
    insert,
    literal,
    or_,
    select,
    text,
)
from sqlalchemy import event as sa_event
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, SessionTransaction

from service.core.tables import Job, QueueCount
from service.lifecycle.status import JobStatus

SHARDS = 32
BEHIND_LIMIT = 500  # read at most this many rows behind a job; past that, count ahead
_PENDING = "janus.queue_moves"  # Session.info key: (model, lane) -> change, until commit

_jobs = Job.__table__
_counts = QueueCount.__table__
_QUEUED = JobStatus.QUEUED.value


def moved(*, session: Session, changes: Counter[tuple[str, int]]) -> None:
    """Record jobs entering (+) or leaving (-) the queue; written when `session` commits.

    Deferred to the commit so that a transaction touches its count rows last, once,
    in one order: they are never held while waiting for a job or batch row, and two
    transactions cannot lock them in opposite orders (no deadlock).
    """
    pending: Counter[tuple[str, int]] = session.info.setdefault(_PENDING, Counter())
    pending.update(changes)


@sa_event.listens_for(Session, "before_commit")
def _write_moves(session: Session) -> None:
    pending = session.info.pop(_PENDING, None)
    if not pending:
        return
    session.flush()  # pending row changes first: count rows are the last locks taken
    rows = sorted(
        (model, lane, random.randrange(SHARDS), n) for (model, lane), n in pending.items() if n
    )
    connection = session.connection()
    for model, lane, shard, n in rows:
        add(connection, model=model, lane=lane, shard=shard, n=n)


@sa_event.listens_for(Session, "after_transaction_end")
def _forget_moves(session: Session, transaction: SessionTransaction) -> None:
    if transaction.parent is None:  # rolled back or closed: its moves never happened
        session.info.pop(_PENDING, None)


def _upsert(dialect: str) -> Any:
    """`n += :n` on one shard row, created at :n if missing."""
    make = pg_insert if dialect == "postgresql" else sqlite_insert
    stmt = make(_counts).values(
        model=bindparam("model"), lane=bindparam("lane"), shard=bindparam("shard"),
        n=bindparam("n"),
    )
    return stmt.on_conflict_do_update(
        index_elements=[_counts.c.model, _counts.c.lane, _counts.c.shard],
        set_={"n": _counts.c.n + stmt.excluded.n},
    )


_UPSERTS = {name: _upsert(name) for name in ("postgresql", "sqlite")}


def add(connection: Connection, *, model: str, lane: int, shard: int, n: int) -> None:
    connection.execute(
        _UPSERTS[connection.dialect.name],
        {"model": model, "lane": lane, "shard": shard, "n": n},
    )


# Queued jobs of a model in lanes served before or with `lane`.
_QUEUED_UP_TO = (
    select(func.coalesce(func.sum(_counts.c.n), 0))
    .where(_counts.c.model == bindparam("q_model"), _counts.c.lane <= bindparam("q_lane"))
    .scalar_subquery()
)


INSERTED = (
    "id", "api_key_id", "model", "task", "status", "input", "metadata", "webhook",
    "webhook_events", "lane", "attempts", "cancel_requested", "idempotency_key",
    "request_hash", "created_at", "enqueued_at", "deadline_at",
)
_JSON = {name for name in INSERTED if isinstance(_jobs.c[name].type, JSON)}

# Postgres: INSERT the job, add 1 to a count shard, and read the count, in one
# statement. A data-modifying CTE runs on the statement's snapshot, which its own
# changes are not part of: the sum is the queued jobs before this one, i.e. its
# position. (The CTEs are selected from because only then must they return a row.)
_SUBMIT_SQL = (
    "WITH new_job AS (INSERT INTO jobs ({columns}) VALUES ({values}) RETURNING id), "
    "counted AS (INSERT INTO queue_counts (model, lane, shard, n) "
    "VALUES (%(model)s, %(lane)s, %(shard)s, 1) ON CONFLICT (model, lane, shard) "
    "DO UPDATE SET n = queue_counts.n + 1 RETURNING n) "
    "SELECT (SELECT coalesce(sum(n), 0) FROM queue_counts "
    "WHERE model = %(model)s AND lane <= %(lane)s), "
    "(SELECT count(*) FROM new_job), (SELECT count(*) FROM counted)"
).format(
    columns=", ".join(INSERTED),
    values=", ".join(f"%({c})s::jsonb" if c in _JSON else f"%({c})s" for c in INSERTED),
)


def insert_queued(db: Engine, values: dict[str, Any]) -> int:
    """INSERT one queued job (`values` by column name), count it in; returns its position.

    The job is committed when this returns. On Postgres it is one statement, sent
    on a pooled connection in autocommit mode (no BEGIN and COMMIT round trips) and
    straight to the driver: SQLAlchemy's compile-and-execute layers cost more CPU
    than the statement (about 0.13 ms a submit), so this does the little of theirs
    that matters (errors are raised as SQLAlchemy's, a dead connection is
    invalidated). Elsewhere (the embedded SQLite) three statements in a transaction.
    """
    model, lane = values["model"], values["lane"]
    shard = random.randrange(SHARDS)
    if db.dialect.name != "postgresql":
        with db.begin() as connection:
            connection.execute(insert(_jobs), values)
            add(connection, model=model, lane=lane, shard=shard, n=1)
            counted = connection.execute(
                select(_QUEUED_UP_TO), {"q_model": model, "q_lane": lane}
            ).scalar_one()
        return int(counted) - 1
    params = {**values, "shard": shard}
    for name in _JSON:
        params[name] = json.dumps(params[name]) if params[name] is not None else None
    return int(_autocommit(db, _SUBMIT_SQL, params)[0])


def _autocommit(db: Engine, sql: str, params: dict[str, Any]) -> Any:
    """Run one statement on its own transaction; its first row. Driver errors come out
    as SQLAlchemy's (IntegrityError, OperationalError ...), as the API expects."""
    dbapi = db.dialect.loaded_dbapi
    try:
        pooled = db.raw_connection()  # the pool's checkout checks run, as for any use
    except dbapi.Error as exc:  # could not connect
        raise DBAPIError.instance(None, None, exc, dbapi.Error, dialect=db.dialect) from exc
    try:
        return _execute(db, pooled, sql, params)
    finally:
        pooled.close()


def _execute(db: Engine, pooled: Any, sql: str, params: dict[str, Any]) -> Any:
    dbapi = db.dialect.loaded_dbapi
    driver = pooled.driver_connection
    try:
        driver.autocommit = True
        try:
            return driver.execute(sql, params).fetchone()
        finally:
            if not driver.closed:
                driver.autocommit = False
    except dbapi.Error as exc:
        gone = db.dialect.is_disconnect(exc, driver, None)
        if gone:
            pooled.invalidate(exc)
        raise DBAPIError.instance(
            sql, params, exc, dbapi.Error, connection_invalidated=gone, dialect=db.dialect
        ) from exc


_behind = (
    select(literal(1))
    .where(
        _jobs.c.model == bindparam("q_model"),
        _jobs.c.status == _QUEUED,
        _jobs.c.lane == bindparam("q_lane"),
        _jobs.c.id > bindparam("q_id"),
    )
    .limit(BEHIND_LIMIT)
    .subquery()
)
_FROM_COUNTS = select(
    _QUEUED_UP_TO,
    select(func.count()).where(_jobs.c.id == bindparam("q_id"), _jobs.c.status == _QUEUED)
    .scalar_subquery(),
    select(func.count()).select_from(_behind).scalar_subquery(),
)
_AHEAD = (
    select(func.count())
    .select_from(_jobs)
    .where(
        _jobs.c.model == bindparam("q_model"),
        _jobs.c.status == _QUEUED,
        or_(_jobs.c.lane < bindparam("q_lane"),
            and_(_jobs.c.lane == bindparam("q_lane"), _jobs.c.id < bindparam("q_id"))),
    )
)


def position(connection: Connection, *, model: str, lane: int, job_id: str) -> int:
    """How many queued jobs of `model` a worker takes before job `job_id` (see above)."""
    params = {"q_model": model, "q_lane": lane, "q_id": job_id}
    total, itself, behind = connection.execute(_FROM_COUNTS, params).one()
    if behind < BEHIND_LIMIT:
        return max(0, int(total) - int(itself) - int(behind))
    return int(connection.execute(_AHEAD, params).scalar_one())


def recount(*, session: Session) -> None:
    """Set the counts from the jobs table (after a restore, or old processes ran).

    Writers wait while it runs: a transaction that has changed jobs but not yet its
    counts is not in this snapshot, and adds its change after.
    """
    if session.connection().dialect.name == "postgresql":
        session.execute(text("LOCK TABLE queue_counts IN EXCLUSIVE MODE"))
    session.execute(delete(QueueCount))
    session.execute(
        insert(QueueCount).from_select(
            ["model", "lane", "shard", "n"],
            select(Job.model, Job.lane, literal(0), func.count())
            .where(Job.status == _QUEUED)
            .group_by(Job.model, Job.lane),
        )
    )


def drift(*, session: Session) -> dict[tuple[str, int], tuple[int, int]]:
    """(model, lane) -> (kept count, counted rows) wherever they differ (should be none)."""
    kept = {
        (model, lane): n
        for model, lane, n in session.execute(
            select(QueueCount.model, QueueCount.lane, func.sum(QueueCount.n))
            .group_by(QueueCount.model, QueueCount.lane)
        )
    }
    counted = {
        (model, lane): n
        for model, lane, n in session.execute(
            select(Job.model, Job.lane, func.count())
            .where(Job.status == _QUEUED)
            .group_by(Job.model, Job.lane)
        )
    }
    keys = set(kept) | set(counted)
    return {
        key: (int(kept.get(key, 0)), int(counted.get(key, 0)))
        for key in sorted(keys)
        if int(kept.get(key, 0)) != int(counted.get(key, 0))
    }
