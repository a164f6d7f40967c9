"""The engine's finished rows are stored on the finisher's thread: the engine claims and
steps the next job while a finished one is still being uploaded and committed."""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from service.core.db import make_db, make_sessionmaker, session_scope
from service.core.storage import LocalStorage
from service.core.tables import Job
from service.keys.store import create_key
from service.lifecycle.jobs import JobSpec, create_job
from service.workers.finisher import Finisher

pytest.importorskip("torch")


# -- the finisher on its own ----------------------------------------------------------


def test_work_runs_in_order_and_drain_waits_for_all() -> None:
    finisher, done = Finisher(depth=2), []
    for n in range(5):
        finisher.submit(f"j{n}", lambda n=n: (time.sleep(0.01), done.append(n)))
    finisher.drain()
    assert done == [0, 1, 2, 3, 4]
    assert finisher.pending() == 0
    finisher.close()


def test_a_failing_store_is_logged_and_the_next_one_runs(caplog) -> None:
    finisher, done = Finisher(depth=1), []

    def broken() -> None:
        raise RuntimeError("disk on fire")

    finisher.submit("bad", broken)
    finisher.submit("good", lambda: done.append("good"))
    finisher.close()
    assert done == ["good"]
    assert "job bad: storing its outcome failed" in caplog.text


def test_submit_waits_when_the_queue_is_full() -> None:
    finisher, gate, started = Finisher(depth=1), threading.Event(), threading.Event()
    finisher.submit("a", lambda: (started.set(), gate.wait(30)))
    assert started.wait(30)
    finisher.submit("b", lambda: None)  # fills the queue (a is running, not queued)
    third = threading.Thread(target=finisher.submit, args=("c", lambda: None), daemon=True)
    third.start()
    third.join(0.3)
    assert third.is_alive()  # held back until the store in progress ends
    gate.set()
    third.join(30)
    assert not third.is_alive()
    finisher.close()
    assert finisher.pending() == 0


def test_a_held_job_keeps_its_slot_until_released() -> None:
    finisher = Finisher(depth=2)
    finisher.hold("a")
    finisher.hold("b")
    assert finisher.held() == 2
    threading.Timer(0.05, finisher.release, args=("a",)).start()
    finisher.wait_release(timeout=60)  # returns once one of them is released
    assert finisher.held() == 1
    finisher.release("b")
    finisher.release("b")  # twice is harmless
    assert finisher.held() == 0


# -- in the engine loop, against Postgres ---------------------------------------------


class HeldStorage(LocalStorage):
    """Local storage whose upload of one job's images waits for a gate."""

    def __init__(self, root: Path) -> None:
        super().__init__(root, "http://files.invalid", b"k")
        self.hold: str | None = None
        self.gate, self.holding = threading.Event(), threading.Event()

    def put(self, key: str, data: bytes, content_type: str) -> None:
        if self.hold and key.startswith(f"jobs/{self.hold}/"):
            self.holding.set()
            self.gate.wait(60)
        super().put(key, data, content_type)


class ModelQueue:
    """A model no other worker serves: its database handles, held storage, an API key,
    and the worker's engine loop over it."""

    def __init__(self, settings: Any, tmp_path: Path, name: str) -> None:
        self.settings, self.model = settings, f"{name}-{uuid.uuid4().hex[:6]}"
        self.engine = make_db(settings.database_url)
        self.sessions = make_sessionmaker(self.engine)
        self.storage = HeldStorage(tmp_path)
        with session_scope(self.sessions) as session:
            self.key_id = create_key(session=session, name=name).id

    def submit(self, seed: int) -> str:
        spec = JobSpec(model=self.model, task="generate",
                       input={"prompt": "a kite", "seed": seed})
        return create_job(db=self.engine, storage=self.storage, api_key_id=self.key_id,
                          spec=spec)[0].id

    def loop(self, runner: Any, slots: int) -> Any:
        from service.workers.handler import JobHandler
        from service.workers.loop import WorkerLoop

        handler = JobHandler(self.settings, self.sessions, self.storage, self.model,
                             f"w-{self.model}")
        return WorkerLoop(handler, runner, slots=slots, admit_every=1)


def test_the_next_job_runs_while_a_finished_one_is_stored(settings, pro, tmp_path) -> None:
    q = ModelQueue(settings, tmp_path, "finisher")
    storage, sessions = q.storage, q.sessions

    def statuses() -> dict[str, str]:
        with session_scope(sessions) as session:
            rows = session.execute(select(Job.id, Job.status).where(Job.id.in_([a, b])))
            return {r.id: r.status for r in rows}

    a, b = q.submit(1), q.submit(2)
    storage.hold = a
    loop = q.loop(pro, slots=1)  # one slot: b waits for a's slot
    worker = threading.Thread(target=loop.run, args=("",), daemon=True)
    worker.start()
    try:
        assert storage.holding.wait(60), "a never reached its upload"
        # While a's upload is held, its free slot already took b, which ran to its end.
        deadline = time.monotonic() + 60
        while loop.finisher.pending() < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert loop.finisher.pending() == 2
        assert statuses() == {a: "running", b: "running"}  # neither committed yet
    finally:
        storage.gate.set()
        worker.join(60)
    assert not worker.is_alive()  # run() returns only once both are stored
    assert statuses() == {a: "succeeded", b: "succeeded"}
    with session_scope(sessions) as session:
        done = dict(session.execute(select(Job.id, Job.completed_at)
                                    .where(Job.id.in_([a, b]))).all())
    assert done[a] <= done[b]  # stored in the order they finished
    q.engine.dispose()


@pytest.mark.timeout(600)
def test_finisher_benchmark_runs(pg_url: str) -> None:
    """bench/finisher.py (inline vs finisher, Postgres, the worker's job path) cannot rot."""
    import os
    import re
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    admin = os.environ.get("TEST_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    done = subprocess.run(
        [sys.executable, "bench/finisher.py", "--jobs", "2", "--max-batch", "2", "--rounds",
         "1", "--pg-admin", admin],
        cwd=repo, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    assert [line.split("|")[0].strip() for line in lines if "|" in line][1:] == [
        "inline", "finisher"]
    assert re.fullmatch(r"engine_ms_per_finished_row_inline=\d+\.\d+ finisher=\d+\.\d+ "
                        r"jobs_per_s_ratio=\d+\.\d+", lines[-1])
