"""Pooled Postgres connections are checked without a round trip per checkout
(service/core/db.py): a server that dropped a connection is noticed on its socket and the
connection replaced; a connection idle for a while is pinged; a busy one never is."""

from __future__ import annotations

import psycopg
import pytest
from sqlalchemy import text

from service.core import db
from tests.helpers import wait_for


@pytest.fixture()
def engine(settings):  # type: ignore[no-untyped-def]
    engine = db.make_db(settings.database_url)
    pings: list[int] = []
    real = engine.dialect.do_ping

    def counted(dbapi_conn):  # type: ignore[no-untyped-def]
        pings.append(1)
        return real(dbapi_conn)

    engine.dialect.do_ping = counted  # type: ignore[method-assign]
    engine.pings = pings  # type: ignore[attr-defined]
    yield engine
    engine.dispose()


def _backend(engine) -> int:  # type: ignore[no-untyped-def]
    with engine.connect() as conn:
        return conn.execute(text("SELECT pg_backend_pid()")).scalar_one()


def test_a_busy_connection_is_not_pinged(engine) -> None:  # type: ignore[no-untyped-def]
    pids = {_backend(engine) for _ in range(20)}
    assert len(pids) == 1 and engine.pings == []


def test_a_connection_the_server_ended_is_replaced(engine, pg_url) -> None:  # type: ignore[no-untyped-def]
    pid = _backend(engine)
    with psycopg.connect(pg_url, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))

        def gone() -> bool:  # the backend has sent its FATAL notice and closed the socket
            return admin.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s",
                                 (pid,)).fetchone() == (0,)

        wait_for(gone, 30, interval=0.05, what="the backend to end")
    assert _backend(engine) != pid  # no error: the dead one was found and replaced
    assert engine.pings == [1]


def test_an_idle_connection_is_pinged(engine, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    _backend(engine)
    monkeypatch.setattr(db, "PING_IDLE_SECONDS", 0.0)
    _backend(engine)
    _backend(engine)
    assert engine.pings == [1, 1]
