"""The live event log (service/core/events.py) on its real backends: a Redis stream per
job, and the SQL table of the embedded mode on SQLite and on Postgres."""

from __future__ import annotations

import logging
import socket
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from service.core import events_sql
from service.core.events import START, EventLog, event_log
from service.core.settings import Settings
from service.entry.migrate import upgrade
from tests.helpers import free_port, wait_for

MAX_LEN = 20


def _redis_settings(redis_url: str, tmp: Path, **extra: object) -> Settings:
    return Settings(data_dir=tmp, broker_url=redis_url,
                    broker_key_prefix=f"ev{uuid.uuid4().hex[:8]}:", **extra)


@pytest.fixture(params=["redis", "sqlite", "postgres"])
def backend(request, tmp_path: Path, redis_url: str) -> Iterator[tuple[str, Settings]]:
    common = {"events_max_len": MAX_LEN, "events_ttl_seconds": 1}
    if request.param == "redis":
        yield "redis", _redis_settings(redis_url, tmp_path, **common)
        return
    if request.param == "sqlite":
        settings = Settings(data_dir=tmp_path, **common)  # the embedded defaults
    else:
        pg_url = request.getfixturevalue("pg_url")
        settings = Settings(data_dir=tmp_path, database_url=pg_url,
                            broker_url=f"sqla+sqlite:///{tmp_path / 'b.db'}", **common)
    upgrade(settings.database_url)
    yield request.param, settings


@pytest.fixture()
def log(backend: tuple[str, Settings]) -> EventLog:
    return event_log(backend[1])


def _job() -> str:
    return f"job_{uuid.uuid4().hex}"


def _read_all(log: EventLog, job: str) -> list:
    out, after = [], None
    while batch := log.read(job, after, 0):
        out += batch
        after = batch[-1].id
    return out


def test_the_backend_follows_the_broker(backend, log: EventLog) -> None:
    kind, _ = backend
    assert type(log).__name__ == ("RedisEventLog" if kind == "redis" else "SqlEventLog")


def test_emit_read_and_resume_after_an_id(log: EventLog) -> None:
    job, other = _job(), _job()
    assert log.read(job, None, 0) == [] and log.last_id(job) == START
    for n in range(5):
        log.emit(job, "progress", {"step": n, "steps": 5, "fraction": n / 5})
    log.emit(other, "token", {"text": "elsewhere"})
    assert log.flush()
    got = log.read(job, None, 0)
    assert [e.kind for e in got] == ["progress"] * 5
    assert [e.data["step"] for e in got] == list(range(5))
    assert len({e.id for e in got}) == 5
    assert log.last_id(job) == got[-1].id
    # Resuming after any id gives exactly the rest: no loss, no repeats.
    for k, event in enumerate(got):
        assert log.read(job, event.id, 0) == got[k + 1 :]
    assert log.read(job, START, 0) == got
    assert [e.data for e in log.read(other, None, 0)] == [{"text": "elsewhere"}]


def test_a_blocked_read_wakes_on_the_next_event(log: EventLog) -> None:
    job = _job()
    log.emit(job, "started", {})
    assert log.flush()
    after = log.last_id(job)
    threading.Timer(0.3, lambda: log.emit(job, "token", {"text": "hi"})).start()
    got = log.read(job, after, 60)  # returns with the event, long before 60 s
    assert [(e.kind, e.data) for e in got] == [("token", {"text": "hi"})]


def test_a_read_with_nothing_new_returns_empty_after_its_timeout(log: EventLog) -> None:
    job = _job()
    log.emit(job, "started", {})
    assert log.flush()
    assert log.read(job, log.last_id(job), 0.3) == []
    assert log.read(_job(), None, 0.3) == []


def test_hostile_ids_are_refused(backend, log: EventLog) -> None:
    for bad in ("x", "1-2-3", "-1", "1" * 30, "", " 1", "1\n", "\u0663"):
        if bad == "":
            continue  # empty means "from the start"
        with pytest.raises(ValueError):
            log.read(_job(), bad, 0)
        assert not log.valid_id(bad)
    if backend[0] == "redis":  # well-formed, but past what Redis can hold
        with pytest.raises(ValueError):
            log.read(_job(), "99999999999999999999-0", 0)


def test_a_stream_keeps_about_its_newest_max_len_events(backend, log: EventLog) -> None:
    job = _job()
    for n in range(600):
        log.emit(job, "token", {"text": str(n)})
    assert log.flush(30)
    kept = _read_all(log, job)
    # Redis trims whole stream nodes (100 entries) for MAXLEN ~; SQL every max_len/10 rows.
    assert MAX_LEN <= len(kept) <= MAX_LEN + 100
    assert kept[-1].data == {"text": "599"}
    assert [int(e.data["text"]) for e in kept] == list(range(600 - len(kept), 600))


def test_events_expire_after_the_job_ends(backend, log: EventLog, monkeypatch) -> None:
    kind, settings = backend
    job, live = _job(), _job()
    log.emit(job, "started", {})
    log.emit(live, "started", {})
    assert log.flush()
    if kind == "redis":
        key = log.key(job)  # type: ignore[attr-defined]
        client = redis.Redis.from_url(settings.broker_url)
        assert client.ttl(key) > 3600  # a live job's stream lasts (a day)
    log.end(job)
    assert log.flush()
    if kind == "redis":
        assert 0 < client.ttl(key) <= 1
    else:
        monkeypatch.setattr(events_sql, "PURGE_EVERY_SECONDS", 0.0)

    def gone() -> bool:
        if kind != "redis":
            log.emit(live, "progress", {})  # a write purges what expired
            log.flush()
        return log.read(job, None, 0) == []

    wait_for(gone, 30, what="the ended job's events to expire")
    assert log.read(live, None, 0)  # the live job keeps its events


def _silent_server() -> tuple[socket.socket, int]:
    """Accepts connections and never answers: a hung Redis."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    return server, server.getsockname()[1]


@pytest.mark.parametrize("where", ["refused", "silent"])
def test_a_broken_redis_never_raises_nor_blocks_the_emitter(where, tmp_path, caplog) -> None:
    server = None
    if where == "refused":
        port = free_port()
    else:
        server, port = _silent_server()
    log = event_log(_redis_settings(f"redis://127.0.0.1:{port}/0", tmp_path))
    job = _job()
    with caplog.at_level(logging.WARNING, logger="service.core.events"):
        for n in range(5000):
            log.emit(job, "token", {"text": str(n)})  # a queue append: no network wait
        log.end(job)
        log.flush(10)  # the writer drops what it cannot write
        wait_for(lambda: "dropped" in caplog.text, 30, what="a warning")
    # Rate-limited: thousands of failed events, a handful of lines.
    assert sum("event log" in r.getMessage() for r in caplog.records) <= 3
    if server is not None:
        server.close()


def test_emit_survives_a_fork_like_restart(log: EventLog, monkeypatch) -> None:
    """A process forked after the log started gets its own writer (a pid change)."""
    job = _job()
    log.emit(job, "started", {})
    assert log.flush()
    monkeypatch.setattr(log, "_pid", -2)  # as the child of a fork sees it
    log.emit(job, "token", {"text": "after fork"})
    assert log.flush()
    assert [e.kind for e in log.read(job, None, 0)] == ["started", "token"]


def test_flush_in_a_process_that_never_emitted_returns_at_once(tmp_path) -> None:
    assert event_log(Settings(data_dir=tmp_path)).flush(5)
