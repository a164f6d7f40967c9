"""Deadlines, poison jobs and running cancellation, on real Postgres/Redis (+ a worker)."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from sqlalchemy import update

from service.core.broker import make_celery
from service.core.db import make_db, make_sessionmaker, session_scope
from service.core.tables import Job, utcnow
from service.workers.sweeper import sweep_once
from tests.helpers import IDLE, SLOW, settings_env, start_worker, wait_for, wait_terminal


@pytest.fixture(scope="module")
def sweeper(settings):  # type: ignore[no-untyped-def]
    engine = make_db(settings.database_url)
    sessions = make_sessionmaker(engine)
    celery = make_celery(settings)
    yield lambda: sweep_once(sessions=sessions, celery=celery, settings=settings), sessions
    engine.dispose()


def test_queued_job_past_its_deadline_is_canceled(client, auth, sweeper) -> None:
    sweep, _ = sweeper
    job = client.post("/v1/jobs", json={"model": IDLE, "task": "generate",
                                        "input": {"prompt": "late"}},
                      headers={**auth, "Cancel-After": "0.5"}).json
    assert job["deadline_at"] is not None
    time.sleep(0.7)
    report = sweep()
    assert job["id"] in report.expired
    after = client.get(f"/v1/jobs/{job['id']}", headers=auth).json
    assert after["status"] == "canceled"
    assert after["error"]["code"] == "deadline_exceeded" and after["started_at"] is None


def test_a_job_that_keeps_losing_its_worker_fails(client, auth, settings, sweeper) -> None:
    sweep, sessions = sweeper
    job = client.post("/v1/jobs", json={"model": IDLE, "task": "generate",
                                        "input": {"prompt": "poison"}}, headers=auth).json
    with session_scope(sessions) as session:  # as if the worker died on its last attempt
        session.execute(update(Job).where(Job.id == job["id"]).values(
            status="running", worker_id="gone@host:1", attempts=settings.max_attempts,
            lease_expires_at=utcnow() - timedelta(seconds=1), started_at=utcnow()))
    report = sweep()
    assert job["id"] in report.lost
    after = client.get(f"/v1/jobs/{job['id']}", headers=auth).json
    assert after["status"] == "failed" and after["error"]["code"] == "worker_lost"

    second = client.post("/v1/jobs", json={"model": IDLE, "task": "generate",
                                           "input": {"prompt": "once"}}, headers=auth).json
    with session_scope(sessions) as session:  # a first loss: back to the queue
        session.execute(update(Job).where(Job.id == second["id"]).values(
            status="running", worker_id="gone@host:1", attempts=1,
            lease_expires_at=utcnow() - timedelta(seconds=1)))
    assert second["id"] in sweep().requeued
    requeued = client.get(f"/v1/jobs/{second['id']}", headers=auth).json
    assert requeued["status"] == "queued" and requeued["attempts"] == 1
    client.post(f"/v1/jobs/{second['id']}/cancel", headers=auth)


@pytest.mark.slow
def test_running_job_cancel_and_deadline_stop_at_a_step(
    slow_client, auth, settings, slow_settings, spawn
) -> None:
    client = slow_client  # an app of its own that also serves SLOW
    # The suite's lease: the cancel is pushed to the worker, which need not renew before
    # its engine finishes the job (tests/test_cancel_push.py shows it with no renewals).
    start_worker(spawn, settings, model=SLOW, name="slow", env=settings_env(slow_settings))
    body = {"model": SLOW, "task": "generate", "input": {"prompt": "long", "num_images": 16}}
    job = client.post("/v1/jobs", json=body, headers=auth).json

    def progress() -> float:
        got = client.get(f"/v1/jobs/{job['id']}", headers=auth).json
        return got["status"] == "running" and got["metrics"].get("progress", 0) > 0

    wait_for(progress, 60, interval=0.1, what="progress to be reported")
    client.post(f"/v1/jobs/{job['id']}/cancel", headers=auth)
    done = wait_terminal(client, auth, job["id"])
    assert done["status"] == "canceled" and done["error"] is None
    assert done["output"] is None

    late = client.post("/v1/jobs", json=body, headers={**auth, "Cancel-After": "1.0"}).json
    ended = wait_terminal(client, auth, late["id"])
    assert ended["status"] == "canceled"
    assert ended["error"]["code"] == "deadline_exceeded"
