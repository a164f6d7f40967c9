"""Queue positions from kept counts (service/lifecycle/queues.py) on real Postgres and the
embedded SQLite: every way a job enters or leaves the queue keeps the counts equal to a
recount, and every position equals the rows a worker takes first, counted the slow way."""

from __future__ import annotations

import subprocess
import threading
import uuid
from datetime import timedelta

import pytest
from sqlalchemy import and_, delete, func, insert, or_, select

from service.core.db import make_db, make_sessionmaker, session_scope
from service.core.storage import storage_from_settings
from service.core.tables import Batch, Job, QueueCount, utcnow
from service.entry.migrate import upgrade
from service.keys.store import create_key
from service.lifecycle import jobs as crud
from service.lifecycle import queues
from service.lifecycle.batches import cancel_batch, create_batch
from service.lifecycle.claims import claim_next, finish, release
from service.lifecycle.status import JobStatus
from service.lifecycle.sweep import SweepReport, expire_deadlines, expire_leases
from tests.helpers import CLI, settings_env


class World:
    """One database, a key, and a model of the test's own (so other tests' jobs and
    their direct UPDATEs do not count)."""

    def __init__(self, database_url: str, storage) -> None:  # type: ignore[no-untyped-def]
        self.engine = make_db(database_url)
        self.sessions = make_sessionmaker(self.engine)
        self.storage = storage
        self.model = f"qc-{uuid.uuid4().hex[:8]}"
        with session_scope(self.sessions) as session:
            self.key_id = create_key(session=session, name="queues").id

    def submit(self, task: str = "generate", **kwargs) -> tuple[crud.NewJob, int]:  # type: ignore[no-untyped-def]
        spec = crud.JobSpec(model=self.model, task=task, input={"prompt": "x", "seed": 1})
        return crud.create_job(db=self.engine, storage=self.storage,
                               api_key_id=self.key_id, spec=spec, **kwargs)

    def batch(self, n: int):  # type: ignore[no-untyped-def]
        specs = [crud.JobSpec(model=self.model, task="generate", input={"prompt": "b"},
                              line_no=i) for i in range(n)]
        with session_scope(self.sessions) as session:
            batch, ids = create_batch(session=session, storage=self.storage,
                                      api_key_id=self.key_id, specs=specs,
                                      input_format="jsonl", webhook=None, metadata={})
            return batch.id, ids

    def check(self) -> None:
        """The kept counts agree with a recount, and every queued job's position with
        the rows ahead of it in claim order, counted one by one."""
        with session_scope(self.sessions) as session:
            drift = queues.drift(session=session)
            assert {k: v for k, v in drift.items() if k[0] == self.model} == {}
            queued = session.scalars(
                select(Job).where(Job.model == self.model, Job.status == JobStatus.QUEUED)
            ).all()
            for job in queued:
                ahead = session.scalar(
                    select(func.count()).select_from(Job).where(
                        Job.model == self.model, Job.status == JobStatus.QUEUED,
                        or_(Job.lane < job.lane, and_(Job.lane == job.lane, Job.id < job.id)),
                    )
                )
                assert crud.queue_position(session=session, job=job) == ahead, job.id

    def queued(self) -> int:
        with self.engine.connect() as conn:
            return conn.scalar(select(func.count()).select_from(Job).where(
                Job.model == self.model, Job.status == JobStatus.QUEUED))


@pytest.fixture()
def world(settings):  # type: ignore[no-untyped-def]
    w = World(settings.database_url, storage_from_settings(settings))
    yield w
    w.engine.dispose()


@pytest.fixture()
def sqlite_world(tmp_path, settings):  # type: ignore[no-untyped-def]
    url = f"sqlite:///{tmp_path / 'embedded.db'}"
    upgrade(url)
    w = World(url, storage_from_settings(settings))
    yield w
    w.engine.dispose()


def test_submits_count_in_and_read_their_position(world: World) -> None:
    positions = [world.submit()[1] for _ in range(4)]
    assert positions == [0, 1, 2, 3]
    world.check()


def test_every_way_in_and_out_of_the_queue_keeps_the_counts(world: World) -> None:
    first, _ = world.submit()
    second, _ = world.submit(task="understand")  # claims skip it when batching generate
    batch_id, lines = world.batch(3)
    late, position = world.submit()
    assert position == 2  # interactive jobs go before the batch lines queued earlier
    world.check()

    with session_scope(world.sessions) as session:  # head + same-task mates, lanes mixed
        claimed = claim_next(session=session, model=world.model, worker_id="w1",
                             lease_seconds=60, limit=3)
    assert [j.id for j in claimed] == [first.id, late.id, lines[0]]
    world.check()

    with session_scope(world.sessions) as session:  # a transient fault hands one back
        assert release(session=session, job_id=late.id, worker_id="w1")
        assert finish(session=session, job_id=first.id, worker_id="w1",
                      status=JobStatus.SUCCEEDED, output={"text": "ok", "seed": 1})
    world.check()

    with session_scope(world.sessions) as session:  # a queued job canceled
        crud.request_cancel(session=session, job=session.get(Job, second.id))
    world.check()

    with session_scope(world.sessions) as session:  # a lost worker: back to the queue
        claimed = claim_next(session=session, model=world.model, worker_id="w2",
                             lease_seconds=-1, limit=1)
    assert [j.id for j in claimed] == [late.id]
    with session_scope(world.sessions) as session:
        report = SweepReport()
        expire_leases(session=session, now=utcnow(), max_attempts=3, report=report)
    assert late.id in report.requeued
    world.check()

    deadline, _ = world.submit(cancel_after=0.001)  # a Cancel-After that passes
    with session_scope(world.sessions) as session:
        report = SweepReport()
        expire_deadlines(session=session, now=utcnow() + timedelta(seconds=1), report=report)
    assert deadline.id in report.expired
    world.check()

    with session_scope(world.sessions) as session:  # the rest of the batch, canceled
        cancel_batch(session=session, batch=session.get(Batch, batch_id))
    world.check()
    assert world.queued() == 1  # `late`, requeued


def test_a_rolled_back_transition_changes_no_count(world: World) -> None:
    job, _ = world.submit()
    session = world.sessions()
    crud.request_cancel(session=session, job=session.get(Job, job.id))
    session.rollback()
    session.close()
    world.check()
    assert world.queued() == 1


def test_concurrent_submits_and_claims_leave_exact_counts(world: World) -> None:
    errors: list[BaseException] = []

    def submitter() -> None:
        try:
            for _ in range(15):
                world.submit()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    def claimer() -> None:
        try:
            for _ in range(10):
                with session_scope(world.sessions) as session:
                    claim_next(session=session, model=world.model, worker_id="w",
                               lease_seconds=60, limit=2)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=submitter) for _ in range(4)]
    threads += [threading.Thread(target=claimer) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    world.check()


def test_behind_many_the_position_is_counted_from_the_front(world: World) -> None:
    first, _ = world.submit()
    with world.engine.begin() as conn:  # rows behind `first`, faster than submits
        rows = [crud.NewJob(
            id=f"job_{first.id[4:14]}{'z' * 8}{i:08d}", api_key_id=world.key_id,
            model=world.model, task="generate", input={}, metadata_={}, webhook=None,
            webhook_events=[], idempotency_key=None, request_hash=None,
            created_at=utcnow(), enqueued_at=utcnow(), deadline_at=None,
        ).row() for i in range(queues.BEHIND_LIMIT + 5)]
        conn.execute(insert(Job.__table__), rows)
        queues.add(conn, model=world.model, lane=0, shard=0, n=len(rows))
    with session_scope(world.sessions) as session:
        job = session.get(Job, first.id)
        assert crud.queue_position(session=session, job=job) == 0
        last = session.get(Job, rows[-1]["id"])
        assert crud.queue_position(session=session, job=last) == len(rows)
    world.check()


def test_recount_repairs_the_counts(world: World) -> None:
    world.submit()
    world.batch(2)
    with world.engine.begin() as conn:  # as if old processes had run against the schema
        conn.execute(delete(QueueCount).where(QueueCount.model == world.model))
    with session_scope(world.sessions) as session:
        assert (world.model, 0) in queues.drift(session=session)
        queues.recount(session=session)
    world.check()


def test_cli_checks_and_recounts(world: World, settings) -> None:  # type: ignore[no-untyped-def]
    world.submit()
    with world.engine.begin() as conn:
        conn.execute(delete(QueueCount).where(QueueCount.model == world.model))
    env = settings_env(settings)
    check = subprocess.run([*CLI, "queues", "check"], env=env, capture_output=True, text=True)
    assert check.returncode == 1 and f"{world.model} lane 0: kept 0, queued rows 1" in check.stdout
    fixed = subprocess.run([*CLI, "queues", "recount"], env=env, capture_output=True, text=True)
    assert fixed.returncode == 0, fixed.stderr
    world.check()
    again = subprocess.run([*CLI, "queues", "check"], env=env, capture_output=True, text=True)
    assert again.returncode == 0 and "agree" in again.stderr


def test_embedded_sqlite_keeps_the_counts_too(sqlite_world: World) -> None:
    w = sqlite_world
    assert [w.submit()[1] for _ in range(3)] == [0, 1, 2]
    w.batch(2)
    w.check()
    with session_scope(w.sessions) as session:
        claim_next(session=session, model=w.model, worker_id="w", lease_seconds=60, limit=4)
    w.check()
    assert w.queued() == 1
