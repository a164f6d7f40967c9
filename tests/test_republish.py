"""The sweeper's republish pass on real Postgres and Redis: which queued rows get a new
wake-up, read through the broker's real key prefix."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta

import pytest
import redis
from sqlalchemy import delete

from service.core.broker import make_celery, publish, queue_depth
from service.core.db import make_db, make_sessionmaker, session_scope
from service.core.ids import new_ids
from service.core.tables import Job, utcnow
from service.keys.store import create_key
from service.lifecycle.sweep import BATCH, republish
from tests.helpers import queue_key


@pytest.fixture()
def rows(settings) -> Iterator:  # type: ignore[no-untyped-def]
    """Adds queued rows of throwaway models; removes them and their queues afterwards."""
    engine = make_db(settings.database_url)
    sessions = make_sessionmaker(engine)
    with session_scope(sessions) as session:
        key_id = create_key(session=session, name="republish").id
    models: list[str] = []

    def add(name: str, count: int, enqueued_at: datetime | None) -> tuple[str, list[str]]:
        model = f"{name}-{uuid.uuid4().hex[:6]}"
        models.append(model)
        ids = new_ids("job", count)
        with session_scope(sessions) as session:
            session.add_all(
                Job(id=job_id, api_key_id=key_id, model=model, task="generate",
                    status="queued", input={"prompt": "p"}, lane=0, enqueued_at=enqueued_at)
                for job_id in ids
            )
        return model, ids

    yield add, sessions
    with session_scope(sessions) as session:
        session.execute(delete(Job).where(Job.model.in_(models)))
    client = redis.Redis.from_url(settings.broker_url)
    client.delete(*[queue_key(settings, model) for model in models])
    engine.dispose()


def test_queue_depth_reads_the_prefixed_queue(settings, rows) -> None:
    assert settings.broker_key_prefix  # the case kombu's passive declare got wrong
    add, _ = rows
    model, ids = add("depth", 2, None)
    for app in (make_celery(settings, publisher=True), make_celery(settings)):
        assert queue_depth(app, model) == 0
    publisher = make_celery(settings, publisher=True)
    assert publish(publisher, [(job_id, model) for job_id in ids], 1) == []
    for app in (publisher, make_celery(settings)):
        assert queue_depth(app, model) == 2


def test_a_long_healthy_queue_hides_no_other_models_lost_rows(settings, rows) -> None:
    add, sessions = rows
    long_ago = utcnow() - timedelta(hours=1)
    # More stale rows than one pass reads, first in queue order, whose queue still holds
    # a message: a slow queue, not a lost one.
    busy, busy_ids = add("busy", BATCH + 5, long_ago)
    celery = make_celery(settings, publisher=True)
    assert publish(celery, [(busy_ids[0], busy)], 1) == []
    lost_model, lost = add("lost", 1, None)  # its publish failed
    quiet_model, quiet = add("quiet", 2, long_ago)  # its message vanished: queue empty

    with session_scope(sessions) as session:
        done = set(republish(session=session, celery=celery, settings=settings))
    assert set(lost) | set(quiet) <= done
    assert not done & set(busy_ids)
    client = redis.Redis.from_url(settings.broker_url)
    assert client.llen(queue_key(settings, lost_model)) == 1
    assert client.llen(queue_key(settings, quiet_model)) == 1  # one wake-up per model
    assert client.llen(queue_key(settings, busy)) == 1  # nothing added to a waiting queue

    with session_scope(sessions) as session:  # marked published: not again next pass
        again = set(republish(session=session, celery=celery, settings=settings))
    assert not again & (set(lost) | set(quiet) | set(busy_ids))
