"""Cancels pushed to the worker holding the job (service/workers/cancels.py).

A cancel of a running job commits its flag, then tells the job's worker, whose lease
keeper reads the flag at once instead of at its next renewal. Here the keepers renew
hourly (`lease.RENEW_AT_MOST_EVERY` raised, a lease of hours), so a cancel that reaches
one did so by its push: job cancel (Redis, and the SQL log of the embedded mode), batch
cancel across two workers, the OpenAI batch cancel, and a real worker's continuous
engine. With Redis away the cancel request still answers and the job still stops, at
the next renewal.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import select

from service.core.db import make_db, make_sessionmaker, session_scope
from service.core.events import event_log, worker_stream
from service.core.settings import Settings
from service.core.tables import Batch, Job
from service.entry.migrate import upgrade
from service.lifecycle import claims
from service.lifecycle.status import JobStatus
from service.workers import lease
from service.workers.cancels import CancelWatch
from service.workers.lease import LeaseKeeper
from tests.helpers import (
    IDLE,
    SLOW,
    free_port,
    make_key,
    settings_env,
    start_worker,
    wait_for,
    wait_terminal,
)

HOURS = 3 * 3600.0  # a lease whose keeper renews hourly once the 5 s ceiling is raised
# A worker whose keepers renew hourly: only a push can bring it a cancel in time.
NO_RENEWALS_CLI = [sys.executable, "-m", "tests.no_renewals"]


class World:
    """An API app with a model of its own (no other test's jobs in its queue), and the
    worker side as a worker process has it: a cancel watch and lease keepers."""

    def __init__(self, settings: Settings) -> None:
        from service.api import create_app

        self.model = f"push-{uuid.uuid4().hex[:6]}"
        self.settings = settings.model_copy(
            update={"models": {**settings.models, self.model: settings.models[IDLE]}})
        self.client = create_app(self.settings).test_client()
        self.auth = {"Authorization": f"Bearer {make_key(self.settings)}"}
        self.engine = make_db(self.settings.database_url)
        self.sessions = make_sessionmaker(self.engine)
        self.watches: dict[str, CancelWatch] = {}

    def submit(self) -> str:
        body = {"model": self.model, "task": "generate", "input": {"prompt": "a fox"}}
        response = self.client.post("/v1/jobs", json=body, headers=self.auth)
        assert response.status_code == 202, response.json
        return response.json["id"]

    def claim(self, worker_id: str, limit: int) -> list[str]:
        with session_scope(self.sessions) as session:
            return [job.id for job in claims.claim_next(
                session=session, model=self.model, worker_id=worker_id, lease_seconds=HOURS,
                limit=limit)]

    def status(self, job_id: str) -> str:
        with session_scope(self.sessions) as session:
            return session.scalar(select(Job.status).where(Job.id == job_id))

    @contextmanager
    def worker(self, worker_id: str, job_ids: list[str]) -> Iterator[LeaseKeeper]:
        """A worker holding `job_ids`; on leaving, it ends them as its engine would."""
        watch = self.watches[worker_id] = CancelWatch(event_log(self.settings), worker_id).start()
        wait_for(watch.ready.is_set, 20, what="the cancel watch to follow its stream")
        keeper = LeaseKeeper(self.sessions, worker_id, HOURS, job_ids, [None] * len(job_ids))
        try:
            with keeper:
                yield keeper
        finally:
            watch.stop()
            with session_scope(self.sessions) as session:
                for job_id in job_ids:
                    claims.finish(session=session, job_id=job_id, worker_id=worker_id,
                                  status=JobStatus.CANCELED)

    def close(self) -> None:
        self.engine.dispose()


@pytest.fixture(params=["redis", "sqlite"])
def world(request, settings: Settings, tmp_path: Path, monkeypatch) -> Iterator[World]:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(lease, "RENEW_AT_MOST_EVERY", 3600.0)
    if request.param == "sqlite":  # the embedded mode: SQLite, a broker in SQLite, no Redis
        settings = Settings(data_dir=tmp_path, models=settings.models)
        upgrade(settings.database_url)
    w = World(settings)
    yield w
    w.close()


def test_a_cancel_reaches_the_keeper_holding_the_job_without_a_renewal(world: World) -> None:
    job_id = world.submit()
    assert world.claim("w-a", 1) == [job_id]
    with world.worker("w-a", [job_id]) as keeper:
        answer = world.client.post(f"/v1/jobs/{job_id}/cancel", headers=world.auth)
        assert answer.status_code == 200 and answer.json["status"] == "running"
        wait_for(lambda: keeper.should_stop(job_id), 20, interval=0.05,
                 what="the pushed cancel to reach the keeper")
    assert world.status(job_id) == JobStatus.CANCELED


def test_a_batch_cancel_reaches_every_worker_running_its_jobs(world: World) -> None:
    lines = "".join(json.dumps({"input": {"prompt": f"p{i}"}}) + "\n" for i in range(3))
    form = {"file": (io.BytesIO(lines.encode()), "b.jsonl"),
            "defaults": json.dumps({"model": world.model, "task": "generate"})}
    upload = world.client.post("/v1/batches", data=form, headers=world.auth,
                               content_type="multipart/form-data")
    assert upload.status_code == 202, upload.json
    batch = upload.json
    [first], [second] = world.claim("w-a", 1), world.claim("w-b", 1)
    with world.worker("w-a", [first]) as a, world.worker("w-b", [second]) as b:
        answer = world.client.post(f"/v1/batches/{batch['id']}/cancel", headers=world.auth)
        assert answer.status_code == 200 and answer.json["status"] == "canceling"
        wait_for(lambda: a.should_stop(first) and b.should_stop(second), 20, interval=0.05,
                 what="both workers to be pushed the batch's cancel")
    # One message to each worker, naming its own job.
    assert (world.watches["w-a"].pushed, world.watches["w-b"].pushed) == (1, 1)
    with session_scope(world.sessions) as session:
        assert session.scalar(select(Batch.status).where(Batch.id == batch["id"])) == "canceled"


def test_an_openai_batch_cancel_is_pushed_too(world: World) -> None:
    lines = "".join(json.dumps({"custom_id": f"c{i}", "method": "POST",
                                "url": "/v1/images/generations",
                                "body": {"model": world.model, "prompt": f"p{i}"}}) + "\n"
                    for i in range(2))
    source = world.client.post(
        "/openai/v1/files", headers=world.auth, content_type="multipart/form-data",
        data={"file": (io.BytesIO(lines.encode()), "in.jsonl"), "purpose": "batch"}).json
    batch = world.client.post("/openai/v1/batches", headers=world.auth, json={
        "input_file_id": source["id"], "endpoint": "/v1/images/generations",
        "completion_window": "24h"}).json
    held = world.claim("w-a", 2)
    assert len(held) == 2
    with world.worker("w-a", held) as keeper:
        answer = world.client.post(f"/openai/v1/batches/{batch['id']}/cancel",
                                   headers=world.auth)
        assert answer.status_code == 200 and answer.json["status"] == "cancelling"
        wait_for(lambda: all(keeper.should_stop(j) for j in held), 20, interval=0.05,
                 what="the OpenAI batch's cancel to reach the keeper")


def test_a_worker_stream_name_fits_every_backend() -> None:
    name = worker_stream("janus-pro-7b@" + "h" * 180 + ":4242")
    assert name.startswith("worker.") and len(name) <= 40  # live_events.stream is 40 wide
    assert name != worker_stream("janus-pro-7b@host:4242")


# -- a real worker -------------------------------------------------------------------------

def _decoding(settings: Settings, job_id: str) -> bool:
    """The job's live events show it decoding (without renewals its row in the database
    shows no progress)."""
    return any(e.kind == "progress" for e in event_log(settings).read(job_id, None, 0))


@pytest.mark.slow
def test_the_continuous_engine_stops_a_pushed_job_and_batch_without_renewals(
    slow_client, auth, settings, slow_settings, spawn
) -> None:
    client = slow_client
    env = settings_env(slow_settings, JANUS_LEASE_SECONDS=str(HOURS))
    worker = start_worker(spawn, settings, model=SLOW, name="push", env=env, max_batch=2,
                          cli=NO_RENEWALS_CLI)
    body = {"model": SLOW, "task": "generate", "input": {"prompt": "long", "num_images": 16}}
    job = client.post("/v1/jobs", json=body, headers=auth).json
    wait_for(lambda: _decoding(slow_settings, job["id"]), 60, interval=0.1,
             what="the job to decode")
    client.post(f"/v1/jobs/{job['id']}/cancel", headers=auth)
    done = wait_terminal(client, auth, job["id"])
    assert done["status"] == "canceled" and done["error"] is None and done["output"] is None
    assert f"cancel requested for ['{job['id']}'] (pushed)" in worker.output()

    lines = "".join(json.dumps({"input": {"prompt": f"long {i}", "num_images": 16}}) + "\n"
                    for i in range(2))
    form = {"file": (io.BytesIO(lines.encode()), "b.jsonl"),
            "defaults": json.dumps({"model": SLOW, "task": "generate"})}
    batch = client.post("/v1/batches", data=form, headers=auth,
                        content_type="multipart/form-data").json
    ids = [line for line in client.get(f"/v1/jobs?batch_id={batch['id']}",
                                       headers=auth).json["data"]]
    wait_for(lambda: all(_decoding(slow_settings, j["id"]) for j in ids), 60, interval=0.1,
             what="both batch jobs to decode side by side")
    client.post(f"/v1/batches/{batch['id']}/cancel", headers=auth)
    for line in ids:
        assert wait_terminal(client, auth, line["id"])["status"] == "canceled"
    assert client.get(f"/v1/batches/{batch['id']}", headers=auth).json["status"] == "canceled"


@pytest.fixture()
def private_redis(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen]]:
    """A Redis of this test's own, which it may stop."""
    port = free_port()
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--save", "",
                             "--appendonly", "no", "--dir", str(tmp_path)],
                            stdout=subprocess.DEVNULL)
    import redis

    client = redis.Redis(port=port)

    def up() -> bool:
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False

    wait_for(up, 20, what="the private redis")
    yield f"redis://127.0.0.1:{port}/0", proc
    if proc.poll() is None:
        proc.terminate()
        proc.wait(10)


@pytest.mark.slow
def test_with_redis_away_a_cancel_still_answers_and_lands_at_renewal(
    slow_settings, private_redis, spawn
) -> None:
    from service.api import create_app

    url, redis_proc = private_redis
    # Renewals every 0.5 s: the job must not finish before the renewal reads the flag.
    ours = slow_settings.model_copy(update={"broker_url": url, "lease_seconds": 1.5})
    client = create_app(ours).test_client()
    auth = {"Authorization": f"Bearer {make_key(ours)}"}
    worker = start_worker(spawn, ours, model=SLOW, name="noredis", env=settings_env(ours))
    body = {"model": SLOW, "task": "generate", "input": {"prompt": "long", "num_images": 16}}
    job = client.post("/v1/jobs", json=body, headers=auth).json
    wait_for(lambda: client.get(f"/v1/jobs/{job['id']}", headers=auth).json["status"]
             == "running", 60, interval=0.05, what="the job to start")
    redis_proc.terminate()
    redis_proc.wait(10)

    answer = client.post(f"/v1/jobs/{job['id']}/cancel", headers=auth)
    assert answer.status_code == 200, answer.json

    def ended() -> dict | None:
        got = client.get(f"/v1/jobs/{job['id']}", headers=auth).json  # no Prefer: no Redis
        return got if got["status"] not in ("queued", "running") else None

    done = wait_for(ended, 120, interval=0.2, what="the job to end")
    assert done["status"] == "canceled" and done["error"] is None
    assert f"cancel requested for ['{job['id']}'] (lease renewal)" in worker.output()
    worker.stop(9)  # its broker is gone: no warm shutdown to wait for
