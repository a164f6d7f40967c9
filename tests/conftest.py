"""Fixtures: real parts for the tests. A Postgres database and a Redis db per xdist
worker, a moto S3 server on loopback, and tiny checkpoints written once per session.
Helpers that test modules import live in tests/helpers.py."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import redis

from service.core.settings import Settings
from tests.helpers import (
    CLI,
    FLOW,
    IDLE,
    SLOW,
    TEST_IMAGE_SIZE,
    TINY,
    Proc,
    free_port,
    make_key,
    queue_key,
    settings_env,
    wait_for,
)

PG_ADMIN = os.environ.get("TEST_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379")


def _worker_index() -> int:
    name = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    return int(name[2:]) if name.startswith("gw") else 0


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    name = f"janus_test_{_worker_index()}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = PG_ADMIN.rsplit("/", 1)[0] + f"/{name}"
    from service.entry.migrate import upgrade

    upgrade(Settings(database_url=url).database_url)
    yield url
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def redis_url() -> str:
    # One Redis logical db per xdist worker keeps queues apart.
    url = f"{REDIS_URL}/{1 + _worker_index() % 15}"
    redis.Redis.from_url(url).flushdb()
    return url


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    log = open(tmp_path_factory.mktemp("moto") / "moto.log", "w")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    endpoint = f"http://127.0.0.1:{port}"
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")

    def up() -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            return False

    wait_for(up, 30, what="moto server")
    yield endpoint
    proc.terminate()
    proc.wait(10)


@pytest.fixture(scope="session")
def bucket(s3_server: str) -> str:
    import boto3

    name = f"janus-test-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> str:
    from service.models.checkpoints.tiny import write_tiny_checkpoint

    out = tmp_path_factory.mktemp("ckpt") / "janus-pro-tiny"
    return write_tiny_checkpoint("janus-pro", str(out), image_size=TEST_IMAGE_SIZE)


@pytest.fixture(scope="session")
def flow_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> str:
    from service.models.checkpoints.tiny import write_tiny_checkpoint

    out = tmp_path_factory.mktemp("ckpt") / "janusflow-tiny"
    return write_tiny_checkpoint("janusflow", str(out), image_size=TEST_IMAGE_SIZE)


@pytest.fixture(scope="session")
def settings(
    pg_url: str,
    redis_url: str,
    s3_server: str,
    bucket: str,
    tiny_checkpoint: str,
    flow_checkpoint: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Settings:
    return Settings(
        data_dir=tmp_path_factory.mktemp("data"),
        database_url=pg_url,
        broker_url=redis_url,
        storage_url=f"s3://{bucket}/t",
        s3_endpoint_url=s3_server,
        broker_key_prefix=f"t{uuid.uuid4().hex[:8]}:",  # concurrent test runs share Redis
        models={TINY: tiny_checkpoint, IDLE: tiny_checkpoint, FLOW: flow_checkpoint},
        secret_key=secrets.token_hex(16),
        lease_seconds=3,
        republish_after_seconds=2,
        sweep_interval_seconds=0.5,
        worker_heartbeat_seconds=1,
        max_attempts=3,
    )


@pytest.fixture(scope="session")
def app(settings: Settings):  # type: ignore[no-untyped-def]
    from service.api import create_app

    return create_app(settings)


@pytest.fixture()
def client(app):  # type: ignore[no-untyped-def]
    return app.test_client()


@pytest.fixture(scope="session")
def api_key(settings: Settings) -> str:
    return make_key(settings, "a")


@pytest.fixture(scope="session")
def auth(api_key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"}


@pytest.fixture()
def spawn(tmp_path: Path, settings: Settings) -> Iterator:  # type: ignore[type-arg]
    procs: list[Proc] = []

    def start(args: list[str], env: dict[str, str] | None = None, name: str = "proc",
              cli: list[str] = CLI) -> Proc:
        proc = Proc(args, env or settings_env(settings), tmp_path / f"{name}-{len(procs)}.log",
                    cli)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        proc.stop()


@pytest.fixture(scope="session")
def slow_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The real 576-token path: long enough per job to kill a worker mid-run."""
    from service.models.checkpoints.tiny import write_tiny_checkpoint

    out = tmp_path_factory.mktemp("slow") / "ckpt"
    return write_tiny_checkpoint("janus-pro", str(out), image_size=384)


@pytest.fixture(scope="session")
def slow_settings(settings: Settings, slow_checkpoint: str) -> Settings:
    """The session's settings plus the SLOW model."""
    return settings.model_copy(update={"models": {**settings.models, SLOW: slow_checkpoint}})


@pytest.fixture()
def slow_client(slow_settings: Settings):  # type: ignore[no-untyped-def]
    """A client of an app of its own that also serves SLOW: the shared app never changes."""
    from service.api import create_app

    return create_app(slow_settings).test_client()


@pytest.fixture()
def side_effects(settings: Settings, app):  # type: ignore[no-untyped-def]
    """A snapshot of what a request could leave behind: jobs and batches, the IDLE
    model's broker queue, stored input images. A refused request changes none of them."""
    from sqlalchemy import create_engine, func, select

    from service.core.tables import Batch, Job

    engine = create_engine(settings.database_url)
    queue = redis.Redis.from_url(settings.broker_url)
    storage = app.extensions["janus"].storage

    def snapshot() -> tuple[int, int, int, int]:
        with engine.connect() as conn:
            jobs = conn.scalar(select(func.count()).select_from(Job))
            batches = conn.scalar(select(func.count()).select_from(Batch))
        return jobs, batches, queue.llen(queue_key(settings, IDLE)), len(storage.list("inputs/"))

    yield snapshot
    engine.dispose()


# Loaded runners of the tiny checkpoints, one per test module that asks (model tests).
@pytest.fixture(scope="module")
def pro(tiny_checkpoint: str):  # type: ignore[no-untyped-def]
    from service.models import runners

    return runners.load_runner(tiny_checkpoint, device="cpu", model_id="tiny-janus-pro")


@pytest.fixture(scope="module")
def flow(flow_checkpoint: str):  # type: ignore[no-untyped-def]
    from service.models import runners

    return runners.load_runner(flow_checkpoint, device="cpu", model_id="tiny-janusflow")
