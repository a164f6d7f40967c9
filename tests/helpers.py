"""Helpers shared by test modules: constants, waiting, subprocesses, images, controls.

Fixtures live in conftest.py; everything a test module imports comes from here,
so no test module imports another.
"""

from __future__ import annotations

import io
import json
import os
import socket
import struct
import subprocess
import sys
import time
import uuid
import zlib
from pathlib import Path

import requests
from PIL import Image

from service.core.settings import Settings
from service.lifecycle.status import TERMINAL

TINY = "janus-pro-tiny"  # served by worker processes in tests
IDLE = "janus-pro-idle"  # configured, never served: API-only tests queue jobs here
FLOW = "janusflow-tiny"
SLOW = "janus-pro-slow"  # a 384 px tiny checkpoint: long enough per job to kill a worker
TEST_IMAGE_SIZE = 64
CLI = [sys.executable, "-m", "service.entry.cli"]


def _intel() -> bool:
    try:
        return "GenuineIntel" in Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return False


# Tests that compare bits across thread counts run MKL in its strict reproducibility mode
# on Intel CPUs, where MKL documents its products as independent of the thread count only
# in that mode. Not on AMD: there MKL keeps its automatic branch, and under STRICT a
# JanusFlow product differed at 1 against 3 and 4 threads (without it: identical).
STRICT_MKL = {"MKL_CBWR": "AVX2,STRICT"} if _intel() else {}


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


def queue_key(settings: Settings, model: str) -> str:
    """The Redis list holding a model's queue."""
    return f"{settings.broker_key_prefix}model.{model}"


def settings_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment a subprocess needs to see the same settings."""
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


def make_key(settings: Settings, name: str = "test") -> str:
    from service.core.db import make_db, make_sessionmaker, session_scope
    from service.keys.store import create_key

    engine = make_db(settings.database_url)
    with session_scope(make_sessionmaker(engine)) as session:
        key = create_key(session=session, name=name).key
    engine.dispose()
    return key


class Proc:
    """A service subprocess whose output goes to a log file shown on failure."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path,
                 cli: list[str] = CLI) -> None:
        self.log = log
        self._fh = open(log, "w")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [*cli, *args],
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


def start_worker(  # type: ignore[no-untyped-def]
    spawn,
    settings: Settings,
    model: str = TINY,
    name: str = "worker",
    env: dict[str, str] | None = None,
    max_batch: int = 1,
    cli: list[str] = CLI,
) -> Proc:
    """Start a worker and wait until it has loaded its model and registered."""
    from sqlalchemy import create_engine, text

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
        cli=cli,
    )
    db_url = Settings(database_url=(env or {}).get("JANUS_DATABASE_URL", settings.database_url))
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


def png_bytes(size: tuple[int, int] = (32, 24), color: str = "red") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def png_header_bomb(width: int = 30000, height: int = 30000) -> bytes:
    """A few hundred bytes that claim to be a 900-megapixel PNG."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(b"\0" * 1024)) + chunk(b"IEND", b""))


def wait_terminal(client, auth, job_id: str, timeout: float = 120) -> dict:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}", headers={**auth, "Prefer": "wait=10"}).json
        if job["status"] in TERMINAL:
            return job
    raise AssertionError(f"job {job_id} did not finish: {job}")


def fetch_png(url: str) -> Image.Image:
    response = requests.get(url, timeout=10)
    assert response.status_code == 200, response.text
    image = Image.open(io.BytesIO(response.content))
    assert image.format == "PNG"
    image.load()
    return image


class Control:
    """A RunControl for model tests: stops `stop_index` once it has been asked more than
    `after` times; records progress."""

    def __init__(self, stop_index: int | None = None, after: int = 0) -> None:
        self.stop_index, self.after = stop_index, after
        self.asked: dict[int, int] = {}
        self.progress: dict[int, list[float]] = {}
        self.steps: dict[int, list[tuple[int | None, int | None]]] = {}
        self.texts: dict[int, list[str]] = {}

    def should_stop(self, index: int) -> bool:
        self.asked[index] = self.asked.get(index, 0) + 1
        return index == self.stop_index and self.asked[index] > self.after

    def report_progress(
        self, index: int, fraction: float, step: int | None = None, steps: int | None = None
    ) -> None:
        self.progress.setdefault(index, []).append(fraction)
        self.steps.setdefault(index, []).append((step, steps))

    def report_text(self, index: int, text_so_far: str) -> None:
        self.texts.setdefault(index, []).append(text_so_far)


def assert_error_shape(response, status: int, code: str) -> dict:  # type: ignore[no-untyped-def]
    """The one JSON error shape with this status and code; returns the `error` object."""
    assert response.status_code == status, (response.status_code, response.get_data(as_text=True))
    body = response.get_json()
    assert set(body) == {"error"}
    assert body["error"]["code"] == code
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    assert "Traceback" not in response.get_data(as_text=True)
    return body["error"]


def start_api(settings: Settings, log: Path, **env: str) -> tuple[Proc, str]:
    """`janus-service api` (gunicorn, one process) on a free port; (process, base URL)."""
    port = free_port()
    api = Proc(["api", "--port", str(port), "--workers", "1"], settings_env(settings, **env),
               log)
    base = f"http://127.0.0.1:{port}"

    def up() -> bool:
        assert api.alive(), api.output()
        try:
            return requests.get(f"{base}/healthz", timeout=1).ok
        except requests.RequestException:  # not listening yet
            return False

    wait_for(up, 60, what="api")
    return api, base
