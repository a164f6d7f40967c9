"""Real parts for the tests: a Postgres database and a Redis db per xdist worker,
a moto S3 server on loopback, and a tiny checkpoint written once per session."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import redis

from service.core.settings import Settings

PG_ADMIN = os.environ.get("TEST_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379")
TINY = "janus-pro-tiny"  # served by worker processes in tests
IDLE = "janus-pro-idle"  # configured, never served: API-only tests queue jobs here
FLOW = "janusflow-tiny"
TEST_IMAGE_SIZE = 64


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(predicate, timeout: float = 60.0, interval: float = 0.2, what: str = "condition"):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


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
    from service.models.tiny import write_tiny_checkpoint

    out = tmp_path_factory.mktemp("ckpt") / "janus-pro-tiny"
    return write_tiny_checkpoint("janus-pro", str(out), image_size=TEST_IMAGE_SIZE)


@pytest.fixture(scope="session")
def flow_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> str:
    from service.models.tiny import write_tiny_checkpoint

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


def queue_key(settings: Settings, model: str) -> str:
    """The Redis list holding a model's queue."""
    return f"{settings.broker_key_prefix}model.{model}"


def settings_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment a subprocess needs to see the same settings."""
    import json

    env = {k: v for k, v in os.environ.items() if not k.startswith("JANUS_")}
    for name, value in settings.model_dump().items():
        if value is None:
            continue
        if isinstance(value, dict | list):
            value = json.dumps(value) if isinstance(value, dict) else ",".join(value)
        env[f"JANUS_{name.upper()}"] = str(value)
    env.setdefault("OMP_NUM_THREADS", "1")
    env.update(extra)
    return env


@pytest.fixture(scope="session")
def app(settings: Settings):  # type: ignore[no-untyped-def]
    from service.api import create_app

    return create_app(settings)


@pytest.fixture()
def client(app):  # type: ignore[no-untyped-def]
    return app.test_client()


def make_key(settings: Settings, name: str = "test") -> str:
    from service.core.db import make_engine, make_sessionmaker, session_scope
    from service.core.keys import create_key

    engine = make_engine(settings.database_url)
    with session_scope(make_sessionmaker(engine)) as session:
        key = create_key(session=session, name=name).key
    engine.dispose()
    return key


@pytest.fixture(scope="session")
def api_key(settings: Settings) -> str:
    return make_key(settings, "a")


@pytest.fixture(scope="session")
def auth(api_key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"}


class Proc:
    """A service subprocess whose output goes to a log file shown on failure."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        self._fh = open(log, "w")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "service.entry.cli", *args],
            env=env,
            stdout=self._fh,
            stderr=subprocess.STDOUT,
        )

    def alive(self) -> bool:
        return self.proc.poll() is None

    def output(self) -> str:
        return self.log.read_text()

    def stop(self, sig: int | None = None) -> None:
        if self.alive():
            if sig is None:
                self.proc.terminate()
            else:
                self.proc.send_signal(sig)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._fh.close()


@pytest.fixture()
def spawn(tmp_path: Path, settings: Settings) -> Iterator:  # type: ignore[type-arg]
    procs: list[Proc] = []

    def start(args: list[str], env: dict[str, str] | None = None, name: str = "proc") -> Proc:
        proc = Proc(args, env or settings_env(settings), tmp_path / f"{name}-{len(procs)}.log")
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        proc.stop()


def start_worker(
    spawn,
    settings: Settings,
    model: str = TINY,
    name: str = "worker",  # type: ignore[no-untyped-def]
    env: dict[str, str] | None = None,
    max_batch: int = 1,
) -> Proc:
    """Start a worker and wait until it has loaded its model and registered."""
    from sqlalchemy import create_engine, text

    from service.core.settings import Settings as S

    worker = spawn(
        [
            "worker",
            "--model",
            model,
            "--hostname",
            f"{name}-{uuid.uuid4().hex[:6]}",
            "--max-batch",
            str(max_batch),
        ],
        env=env,
        name=name,
    )
    db_url = S(database_url=(env or {}).get("JANUS_DATABASE_URL", settings.database_url))
    engine = create_engine(db_url.database_url)

    def registered() -> bool:
        assert worker.alive(), worker.output()
        with engine.connect() as conn:
            pid = worker.proc.pid
            return bool(
                conn.execute(
                    text("SELECT 1 FROM workers WHERE id LIKE :p"), {"p": f"%:{pid}"}
                ).first()
            )

    wait_for(registered, 120, what=f"worker {name} to load its model")
    engine.dispose()
    time.sleep(0.5)  # the consumer starts right after registration
    return worker
