"""The database (a SQLAlchemy `Engine`, named `db` here) and sessions. One per process,
created after any fork."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.orm import Session, sessionmaker

from service.core.sockets import readable


def make_db(url: str) -> Engine:
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        db = create_engine(url, connect_args={"timeout": 30})

        @event.listens_for(db, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            # WAL lets the API read while the worker writes; busy_timeout waits
            # for the writer instead of failing at once.
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return db
    # connect_timeout: a server that does not answer costs seconds, not minutes.
    db = create_engine(
        url,
        pool_size=10,
        max_overflow=20,
        pool_timeout=10,
        connect_args={"connect_timeout": 5} if url.startswith("postgresql") else {},
    )
    _check_on_checkout(db)
    return db


# A pooled connection idle longer than this is pinged before use.
PING_IDLE_SECONDS = 5.0


def _check_on_checkout(db: Engine) -> None:
    """Hand out only live connections, without a round trip per checkout.

    After a database restart the pooled connections are dead. SQLAlchemy's
    `pool_pre_ping` finds out with a `SELECT 1` on every checkout: a round trip and
    about 0.1 ms of CPU on each request, the submit path's largest cost after its
    INSERT. A server that ends a connection (restart, shutdown, a proxy cut, an idle
    timeout) says so on the socket: it sends its FATAL notice and closes, so the idle
    socket turns readable, which a zero-timeout poll sees for free (core/sockets.py).
    An idle connection has nothing else to read (we never LISTEN). So the ping is
    sent only when the socket is readable, or the connection has been idle long
    enough that a silent drop (a firewall's) is possible; a failed ping makes the
    pool replace the connection, as pre-ping did. A connection that dies between the check and its
    use fails that one request (503) and the pool is invalidated, as before.
    """

    @event.listens_for(db, "connect")
    @event.listens_for(db, "checkin")
    def _idle_from_now(_dbapi_conn: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()  # `info` lives as long as the connection

    @event.listens_for(db, "checkout")
    def _checked_out(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        idle_since = record.info.get("idle_since")
        if idle_since is not None and time.monotonic() - idle_since < PING_IDLE_SECONDS:
            try:
                quiet = not readable(dbapi_conn.fileno())
            except Exception:  # noqa: BLE001 - closed, no socket to poll: ping it
                quiet = False
            if quiet:
                return
        try:
            db.dialect.do_ping(dbapi_conn)
        except Exception as exc:  # noqa: BLE001 - any failure: the connection is not usable
            raise DisconnectionError(f"pooled connection failed its ping: {exc}") from exc


def make_sessionmaker(db: Engine) -> sessionmaker[Session]:
    return sessionmaker(db, expire_on_commit=False)


@contextmanager
def session_scope(factory: sessionmaker[Session]) -> Iterator[Session]:
    """One unit of work: commit on success, roll back on error, always close."""
    session = factory()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
