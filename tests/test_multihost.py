"""Several processes, one service: what a multi-host deployment relies on, on one machine.

Two `janus-service worker` processes serve the same model under different --hostname
values, as two GPU hosts would, sharing only the one Postgres, Redis and S3 of the
fixtures; a dispatcher sweeps. Jobs must spread over both, and SIGKILLing one in the
middle of a job must lose nothing (its lease expires after 3 s and the sweeper requeues
the job for the other). The processes log JSON and serve worker metrics, which the
test reads back. The API under several gunicorn workers must report request counts
summed over its processes (prometheus_client multiprocess mode).
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import create_engine, text

from tests.helpers import TINY, Proc, free_port, settings_env, wait_for

pytestmark = pytest.mark.slow
TERMINAL = ("succeeded", "failed", "canceled")


def json_lines(proc: Proc) -> list[dict]:
    """Every line the process wrote, each of which must be one JSON object.

    One exception: Celery prints its "worker: Warm shutdown (MainProcess)" notice
    straight to the terminal from its signal handler, past logging.
    """
    out = []
    for line in proc.output().splitlines():
        if line.strip() and not re.match(r"^worker: \w+ shutdown", line):
            try:
                out.append(json.loads(line))
            except ValueError:
                pytest.fail(f"not a JSON log line: {line!r}")
    return out


def metric(text_body: str, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(text_body):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


def start_workers(spawn, settings, engine, hosts: list[str]) -> dict[str, tuple]:  # type: ignore[no-untyped-def]
    """Start one worker per host name at once; return host -> (proc, worker_id, port)."""
    started = {}
    for host in hosts:
        port = free_port()
        proc = spawn(
            ["worker", "--model", TINY, "--hostname", host, "--max-batch", "1",
             "--metrics-port", str(port)],
            env=settings_env(settings, JANUS_LOG_FORMAT="json"),
            name=host,
        )
        started[host] = (proc, port)

    def worker_id(proc: Proc) -> str | None:
        assert proc.alive(), proc.output()
        with engine.connect() as conn:
            return conn.scalar(text("SELECT id FROM workers WHERE id LIKE :p"),
                               {"p": f"%:{proc.proc.pid}"})

    return {host: (proc, wait_for(lambda p=proc: worker_id(p), 120, what=f"{host} to load"), port)
            for host, (proc, port) in started.items()}


def submit(client, auth, seed: int, num_images: int = 1) -> str:  # type: ignore[no-untyped-def]
    body = {"model": TINY, "task": "generate",
            "input": {"prompt": f"multihost {seed}", "seed": seed, "num_images": num_images}}
    response = client.post("/v1/jobs", json=body, headers=auth)
    assert response.status_code == 202, response.json
    return response.json["id"]


def finished(engine, job_ids: list[str], timeout: float = 90) -> dict[str, dict]:  # type: ignore[no-untyped-def]
    def rows() -> dict[str, dict] | None:
        with engine.connect() as conn:
            found = {row.id: row._asdict() for row in conn.execute(
                text("SELECT id, status, worker_id, attempts FROM jobs WHERE id = ANY(:ids)"),
                {"ids": job_ids})}
        return found if all(r["status"] in TERMINAL for r in found.values()) else None

    return wait_for(rows, timeout, 0.3, what="jobs to finish")


def freeze_mid_job(proc: Proc, engine, worker_id: str, timeout: float = 60) -> str:  # type: ignore[no-untyped-def]
    """SIGSTOP the worker while the database shows it running a job; return that job.

    Stopping first and checking after makes "mid-job" certain: a job seen running a
    moment before the signal may have finished in between.
    """
    query = text("SELECT id FROM jobs WHERE status = 'running' AND worker_id = :w LIMIT 1")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with engine.connect() as conn:
            job_id = conn.scalar(query, {"w": worker_id})
            if job_id:
                os.kill(proc.proc.pid, signal.SIGSTOP)
                if conn.scalar(query, {"w": worker_id}) == job_id:
                    return job_id
                os.kill(proc.proc.pid, signal.SIGCONT)
        time.sleep(0.02)
    raise AssertionError(f"{worker_id} never ran a job")


def test_jobs_spread_over_two_hosts_and_a_killed_worker_loses_none(
    client, auth, settings, spawn  # type: ignore[no-untyped-def]
) -> None:
    engine = create_engine(settings.database_url)
    dispatcher = spawn(["dispatcher"], env=settings_env(settings, JANUS_LOG_FORMAT="json"),
                       name="dispatcher")
    workers = start_workers(spawn, settings, engine, ["host-a", "host-b"])
    (proc_a, id_a, _), (_, id_b, _) = workers["host-a"], workers["host-b"]
    assert id_a.startswith(f"{TINY}@host-a:") and id_b.startswith(f"{TINY}@host-b:")

    # 1. Spread: both hosts take jobs from the one queue.
    first = [submit(client, auth, seed) for seed in range(8)]
    rows = finished(engine, first)
    assert {r["status"] for r in rows.values()} == {"succeeded"}
    by_worker = Counter(r["worker_id"] for r in rows.values())
    assert set(by_worker) == {id_a, id_b}, by_worker

    # The JSON logs tell the same story, every line naming its model and worker.
    ran: dict[str, set[str]] = {}
    for host, (proc, worker_id, _port) in workers.items():
        lines = json_lines(proc)
        ours = [line for line in lines if line["logger"].startswith("service")]
        assert {line.get("model") for line in ours} == {TINY}
        runs = [ln for ln in lines if "joined the generate engine" in ln["msg"]]
        assert all(ln["worker_id"] == worker_id for ln in runs)
        ran[host] = {ln["job_id"] for ln in runs}
    assert ran["host-a"] | ran["host-b"] >= set(first) and ran["host-a"] and ran["host-b"]

    # Each worker's own metrics count what it finished.
    for _proc, worker_id, port in workers.values():
        body = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        assert metric(body, "janus_worker_jobs_total", model=TINY, status="succeeded") == (
            by_worker[worker_id])
        assert metric(body, "janus_worker_batch_size_count", model=TINY, task="generate") > 0
        assert metric(body, "janus_worker_model_load_seconds", model=TINY, device="cpu") > 0
        assert metric(body, "janus_worker_model_warmup_seconds", model=TINY, device="cpu") > 0
        assert metric(body, "janus_worker_decode_step_seconds_count", model=TINY,
                      task="generate") > 0

    # 2. Kill host-a in the middle of a job: the job is finished by host-b, nothing lost.
    second = [submit(client, auth, 100 + n, num_images=4) for n in range(6)]
    victim = freeze_mid_job(proc_a, engine, id_a)
    proc_a.proc.send_signal(signal.SIGKILL)
    proc_a.proc.wait(10)
    rows = finished(engine, second)
    assert {r["status"] for r in rows.values()} == {"succeeded"}, rows
    assert rows[victim]["worker_id"] == id_b and rows[victim]["attempts"] == 2, rows[victim]
    sweeps = [ln["msg"] for ln in json_lines(dispatcher) if ln["msg"].startswith("sweep:")]
    assert any("requeued=1" in msg for msg in sweeps), sweeps
    engine.dispose()


def test_api_metrics_add_up_across_gunicorn_workers(settings, spawn, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    shared = tmp_path / "prometheus"
    shared.mkdir()
    (shared / "counter_999999.db").write_bytes(b"left by an earlier run")  # must be cleared
    port = free_port()
    api = spawn(["api", "--port", str(port), "--workers", "3", "--threads", "2"],
                env=settings_env(settings, JANUS_LOG_FORMAT="json",
                                 PROMETHEUS_MULTIPROC_DIR=str(shared)),
                name="api")
    base = f"http://127.0.0.1:{port}"
    served = Counter[str]()

    def healthz(_: object = None) -> bool:
        try:  # the port listens before the workers have booted: a request may wait
            ok = requests.get(f"{base}/healthz", headers={"Connection": "close"}, timeout=30).ok
        except requests.RequestException:
            return False
        served["ok"] += ok
        return ok

    wait_for(healthz, 60, what="the API to start")

    def access_pids() -> set[int]:
        return {ln["process"] for ln in json_lines(api)
                if ln["logger"] == "gunicorn.access" and ln["http"]["path"] == "/healthz"}

    # Concurrent connections, until at least two gunicorn workers have served some:
    # with one, per-process counters would agree with the total by luck.
    for _round in range(10):
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(healthz, range(40)))
        if len(access_pids()) >= 2:
            break
    assert len(access_pids()) >= 2, "one gunicorn worker served everything"

    for _scrape in range(6):  # whichever worker answers, the count is the total
        body = requests.get(f"{base}/metrics", timeout=5).text
        count = metric(body, "janus_http_requests_total", method="GET", route="/healthz",
                       status="200")
        assert count == served["ok"], (count, served["ok"])
        assert "janus_jobs{" in body  # the per-scrape job gauges are still there
    assert not (shared / "counter_999999.db").exists()
