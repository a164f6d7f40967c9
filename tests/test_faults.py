"""Faults lose nothing: a SIGKILLed worker, and Redis away while a job is submitted."""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import textwrap
import time

import boto3
import pytest
import redis
from sqlalchemy import create_engine, select

from service.core.broker import make_celery
from service.core.db import make_db, make_sessionmaker
from service.core.tables import Job
from service.workers.sweeper import sweep_once
from tests.helpers import (
    SLOW,
    TINY,
    free_port,
    png_bytes,
    queue_key,
    settings_env,
    start_worker,
    wait_for,
    wait_terminal,
)

pytestmark = pytest.mark.slow


def test_worker_killed_mid_job_is_recovered(slow_client, auth, settings, slow_settings,
                                            spawn) -> None:
    client = slow_client  # an app of its own that also serves SLOW
    env = settings_env(slow_settings)
    spawn(["dispatcher"], env=env, name="dispatcher")
    first = start_worker(spawn, settings, model=SLOW, name="first", env=env)

    job = client.post("/v1/jobs", json={"model": SLOW, "task": "generate",
                                        "input": {"prompt": "crash", "num_images": 12,
                                                  "seed": 5}}, headers=auth).json
    engine = create_engine(settings.database_url)

    def status() -> str:
        with engine.connect() as conn:
            return conn.scalar(select(Job.status).where(Job.id == job["id"]))

    wait_for(lambda: status() == "running", 60, interval=0.05, what="job to start")
    first.stop(signal.SIGKILL)
    assert status() == "running"  # orphaned until the lease expires

    start_worker(spawn, settings, model=SLOW, name="second", env=env)
    done = wait_terminal(client, auth, job["id"], timeout=180)
    assert done["status"] == "succeeded", (done["error"], done["attempts"])
    assert done["attempts"] == 2
    s3 = boto3.client("s3", endpoint_url=settings.s3_endpoint_url)
    bucket = settings.storage_url.split("/")[2]
    keys = [o["Key"] for o in s3.list_objects_v2(
        Bucket=bucket, Prefix=f"t/jobs/{job['id']}/").get("Contents", [])]
    assert sorted(keys) == sorted(f"t/jobs/{job['id']}/{n}.png" for n in range(12))
    engine.dispose()


def _hooked(settings, model: str, hook: str, tmp_path):  # type: ignore[no-untyped-def]
    """A model of its own (the tiny one under another name: a queue no other test's job
    joins), an API client that knows it, and a worker environment that runs `hook` as
    its interpreter's sitecustomize."""
    from service.api import create_app

    own = settings.model_copy(update={"models": {**settings.models,
                                                 model: settings.models[TINY]}})
    folder = tmp_path / "hook"
    folder.mkdir()
    (folder / "sitecustomize.py").write_text(hook)
    path = os.pathsep.join(p for p in (str(folder), os.environ.get("PYTHONPATH")) if p)
    return own, create_app(own).test_client(), settings_env(own, PYTHONPATH=path)


# Loaded by a worker's interpreter at start (sitecustomize): the worker SIGKILLs itself
# whenever it is about to admit a job whose prompt is "poison" to its engine, as a
# segfault or the kernel's OOM killer would, after the claim is committed.
POISON_HOOK = textwrap.dedent("""
    import os, signal
    from service.workers import loop  # the one place a job enters an engine

    _row_started = loop.WorkerLoop._row_started

    def _poisoned_row(self, job, keeper):
        if job.input.get("prompt") == "poison":
            os.kill(os.getpid(), signal.SIGKILL)
        return _row_started(self, job, keeper)

    loop.WorkerLoop._row_started = _poisoned_row
""")


def test_a_poison_job_fails_alone_and_its_batch_mates_succeed(settings, auth, spawn,
                                                              tmp_path) -> None:
    """Four jobs claimed as one batch; one of them kills every worker that runs it. It
    fails `worker_lost` after its attempts; the three it was batched with run again,
    each alone, and succeed."""
    model = "janus-pro-poison"  # a queue of its own: no other test's job joins the batch
    own, api, worker_env = _hooked(settings, model, POISON_HOOK, tmp_path)
    spawn(["dispatcher"], env=settings_env(own), name="dispatcher")

    prompts = ["mate 0", "poison", "mate 1", "mate 2"]
    ids = [api.post("/v1/jobs", json={"model": model, "task": "generate",
                                      "input": {"prompt": p, "seed": n}},
                    headers=auth).json["id"] for n, p in enumerate(prompts)]
    workers: list = []

    def start() -> None:  # queued first, so the first claim takes all four as one batch
        workers.append(spawn(["worker", "--model", model, "--max-batch", "4",
                              "--hostname", f"poison-{len(workers)}"],
                             env=worker_env, name="poison-worker"))

    engine = create_engine(settings.database_url)

    def settled() -> dict | None:
        with engine.connect() as conn:
            rows = {r.id: r for r in conn.execute(
                select(Job.id, Job.status, Job.attempts, Job.error).where(Job.id.in_(ids)))}
        if all(r.status in ("succeeded", "failed", "canceled") for r in rows.values()):
            return rows
        if not workers[-1].alive():
            # Three deaths are the poison's three attempts; more would mean it took
            # others down with it.
            assert len(workers) <= 4, [r._asdict() for r in rows.values()]
            start()
        return None

    start()
    rows = wait_for(settled, 300, interval=0.3, what="the four jobs to finish")
    engine.dispose()
    poison = rows[ids[1]]
    assert poison.status == "failed" and poison.error["code"] == "worker_lost", poison
    assert poison.attempts == settings.max_attempts
    for job_id in (ids[0], ids[2], ids[3]):
        mate = rows[job_id]
        # Two claims: the batch the poison killed, then one of its own that succeeded.
        assert (mate.status, mate.attempts) == ("succeeded", 2), mate
    assert len(workers) == 4  # the first, and one after each of the poison's deaths


# A runner bug in the continuous engine: every decode step raises, after the step has
# let its finished rows leave.
# Every engine step raises once the worker has warmed up (a warm-up that fails stops
# the worker before it registers: test_a_warm_up_that_fails_stops_the_worker).
STEP_FAULT_HOOK = textwrap.dedent("""
    from service.models import base, ragged_engine

    _warmup, _forward, warm = base.ModelRunner.warmup, ragged_engine.RaggedEngine._forward, []

    def warmup(self):
        _warmup(self)
        warm.append(True)

    def _broken(self, x):
        if not warm:
            return _forward(self, x)
        raise RuntimeError("injected")

    base.ModelRunner.warmup = warmup
    ragged_engine.RaggedEngine._forward = _broken
""")


def test_a_faulty_engine_step_fails_every_job_of_the_step(settings, auth, spawn,
                                                          tmp_path) -> None:
    """Two understanding rows step together; the first is done at its first token and
    leaves, then the step raises. Both fail with the error; neither is left running."""
    model = "janus-pro-step-fault"  # a queue of its own
    own, api, worker_env = _hooked(settings, model, STEP_FAULT_HOOK, tmp_path)
    image = base64.b64encode(png_bytes((20, 20), "red")).decode()
    ids = [api.post("/v1/jobs", headers=auth, json={
        "model": model, "task": "understand",
        "input": {"image": image, "question": "q?", "max_new_tokens": n}}).json["id"]
        for n in (1, 6)]
    start_worker(spawn, own, model=model, env=worker_env, max_batch=2)
    done = [wait_terminal(api, auth, job_id, timeout=120) for job_id in ids]
    assert [d["status"] for d in done] == ["failed", "failed"], done
    assert all("injected" in d["error"]["message"] for d in done), done


def test_a_warm_up_that_fails_stops_the_worker(settings, spawn, tmp_path) -> None:
    model = "janus-pro-warm-fault"
    hook = STEP_FAULT_HOOK.replace("if not warm:", "if False:")  # warm-up steps fail too
    own, _api, worker_env = _hooked(settings, model, hook, tmp_path)
    worker = spawn(["worker", "--model", model, "--hostname", "warm-fault"],
                   env=worker_env, name="warm-fault")
    assert worker.proc.wait(120) != 0
    out = worker.output()
    assert f"model '{model}': warm-up failed: RuntimeError: injected" in out, out[-2000:]


def test_redis_down_at_submit_then_sweeper_publishes(client, settings, auth, tmp_path) -> None:
    port = free_port()

    def start_redis() -> subprocess.Popen:
        return private_redis(port, tmp_path)

    server = start_redis()
    broken = settings.model_copy(update={"broker_url": f"redis://127.0.0.1:{port}/0"})
    from service.api import create_app

    app = create_app(broken)
    api = app.test_client()
    server.terminate()
    server.wait(10)

    started = time.monotonic()
    r = api.post("/v1/jobs", json={"model": "janus-pro-idle", "task": "generate",
                                   "input": {"prompt": "while redis sleeps"}}, headers=auth)
    assert r.status_code == 202, r.json
    assert time.monotonic() - started < 30  # bounded retries, no hang
    job_id = r.json["id"]
    engine = create_engine(settings.database_url)
    with engine.connect() as conn:
        row = conn.execute(select(Job).where(Job.id == job_id)).one()
    assert row.status == "queued" and row.enqueued_at is None

    server = start_redis()
    try:
        sessions = make_sessionmaker(make_db(settings.database_url))
        celery = make_celery(broken)
        # The test database may hold other tests' unpublished jobs (older: they go first,
        # a bounded number per pass), so sweep until the pass that reaches this one.
        republished: list[str] = []
        for _ in range(100):
            report = sweep_once(sessions=sessions, celery=celery, settings=broken)
            republished += report.republished
            if job_id in report.republished or not report.republished:
                break
        assert job_id in republished
        again = sweep_once(sessions=sessions, celery=celery, settings=broken)
        assert job_id not in again.republished  # published once
        # One wake-up for the model (its id names the oldest unpublished job).
        assert redis.Redis(port=port).llen(queue_key(broken, "janus-pro-idle")) >= 1
    finally:
        server.terminate()
        server.wait(10)
    api.post(f"/v1/jobs/{job_id}/cancel", headers=auth)
    engine.dispose()


def private_redis(port: int, directory) -> subprocess.Popen:  # type: ignore[no-untyped-def]
    """A Redis of the test's own (no persistence), to stop and restart at will."""
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                             "--save", "", "--appendonly", "no", "--dir", str(directory)],
                            stdout=subprocess.DEVNULL)
    wait_for(lambda: _pings(port), 20, what="private redis")
    return proc


def _pings(port: int) -> bool:
    try:
        return bool(redis.Redis(port=port, socket_connect_timeout=0.5).ping())
    except redis.RedisError:
        return False


def test_storage_outage_is_retried_not_failed(settings, auth, spawn, tmp_path) -> None:
    """S3 away while a job finishes: the job goes back to the queue, runs again, and
    succeeds once storage returns; it is never failed for a transient fault."""
    import sys

    import boto3

    from service.api import create_app
    from tests.helpers import TINY, settings_env

    port = free_port()

    def start_s3() -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p",
                                 str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        endpoint = f"http://127.0.0.1:{port}"

        def bucket_made() -> bool:
            try:
                boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="outage")
                return True
            except Exception:
                return False

        wait_for(bucket_made, 30, what="second S3 server")
        return proc

    s3 = start_s3()
    own = settings.model_copy(update={"s3_endpoint_url": f"http://127.0.0.1:{port}",
                                      "storage_url": "s3://outage/o"})
    api = create_app(own).test_client()
    start_worker(spawn, own, env=settings_env(own), name="s3-worker")
    s3.terminate()
    s3.wait(10)
    job = api.post("/v1/jobs", json={"model": TINY, "task": "generate",
                                     "input": {"prompt": "outage", "seed": 4}},
                   headers=auth).json
    engine = create_engine(settings.database_url)

    def attempts() -> int:
        with engine.connect() as conn:
            row = conn.execute(select(Job.status, Job.attempts).where(Job.id == job["id"])).one()
        assert row.status in ("queued", "running"), row  # never failed for a storage fault
        return row.attempts

    wait_for(lambda: attempts() >= 2, 120, interval=0.5, what="a retry after the fault")
    s3 = start_s3()
    try:
        done = wait_terminal(api, auth, job["id"], timeout=180)
        assert done["status"] == "succeeded", (done["error"], done["attempts"])
        keys = boto3.client("s3", endpoint_url=own.s3_endpoint_url).list_objects_v2(
            Bucket="outage", Prefix=f"o/jobs/{job['id']}/")["Contents"]
        assert [k["Key"] for k in keys] == [f"o/jobs/{job['id']}/0.png"]
    finally:
        s3.terminate()
        s3.wait(10)
        engine.dispose()


def test_redis_restarted_under_a_running_worker_loses_nothing(client, settings, auth, spawn,
                                                             tmp_path) -> None:
    """Redis goes away (and comes back empty, as with no persistence) while a worker and
    a dispatcher run: jobs submitted meanwhile are accepted, and all of them finish."""
    from service.api import create_app
    from tests.helpers import TINY, settings_env

    port = free_port()

    def start_redis() -> subprocess.Popen:
        return private_redis(port, tmp_path)

    server = start_redis()
    own = settings.model_copy(update={"broker_url": f"redis://127.0.0.1:{port}/0"})
    env = settings_env(own)
    api = create_app(own).test_client()
    spawn(["dispatcher"], env=env, name="dispatcher")
    start_worker(spawn, own, env=env, name="redis-worker")
    body = {"model": TINY, "task": "generate", "input": {"prompt": "before", "seed": 1}}
    before = api.post("/v1/jobs", json=body, headers=auth).json
    assert wait_terminal(api, auth, before["id"])["status"] == "succeeded"

    server.terminate()
    server.wait(10)
    during = [api.post("/v1/jobs", json={**body, "input": {"prompt": f"down {i}", "seed": i}},
                       headers=auth) for i in range(3)]
    assert [r.status_code for r in during] == [202, 202, 202]
    time.sleep(3)
    server = start_redis()
    try:
        for r in during:
            done = wait_terminal(api, auth, r.json["id"], timeout=180)
            assert done["status"] == "succeeded", (done["error"], done["attempts"])
    finally:
        server.terminate()
        server.wait(10)
