"""Bulk upload benchmark: accept 10,000 generate lines, then poll the batch while it runs.

Runs against real parts on this machine: a fresh Postgres database, Redis, the API
under gunicorn (a subprocess), and one worker with a tiny checkpoint so the batch
really runs while it is polled. Prints tables; nothing is asserted.

    python bench/batch_upload.py [--lines 10000] [--polls 300]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import requests
from sqlalchemy import create_engine, func, select, text

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.scratch import Scratch  # noqa: E402
from service.core.tables import Batch, Job  # noqa: E402

REDIS = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/13")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def wait_http(url: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"process for {url} exited")
        try:
            if requests.get(url, timeout=5).ok:
                return
        except requests.RequestException:
            pass
        time.sleep(0.3)
    raise SystemExit(f"{url} not ready")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lines", type=int, default=10_000)
    parser.add_argument("--polls", type=int, default=300)
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args()

    with Scratch() as stack:
        db_url, work, procs = stack.db_url, stack.work, stack.procs
        from service.models.checkpoints.tiny import write_tiny_checkpoint

        ckpt = write_tiny_checkpoint("janus-pro", str(work / "tiny"), image_size=64)
        env = {**os.environ, "JANUS_DATABASE_URL": db_url, "JANUS_BROKER_URL": REDIS,
               "JANUS_STORAGE_URL": f"file://{work / 'storage'}", "JANUS_DATA_DIR": str(work),
               "JANUS_MODELS": json.dumps({"tiny": ckpt}), "JANUS_LOG_LEVEL": "WARNING",
               "JANUS_PUBLIC_URL": f"http://127.0.0.1:{args.port}", "OMP_NUM_THREADS": "1"}
        import redis

        redis.Redis.from_url(REDIS).flushdb()
        cli = [sys.executable, "-m", "service.entry.cli"]
        subprocess.run([*cli, "migrate"], env=env, check=True, capture_output=True)
        key = json.loads(subprocess.run([*cli, "keys", "create", "--name", "bench", "--json"],
                                        env=env, check=True, capture_output=True,
                                        text=True).stdout)["key"]
        log = open(work / "services.log", "w")  # noqa: SIM115
        procs.append(subprocess.Popen([*cli, "api", "--port", str(args.port), "--workers", "2"],
                                      env=env, stdout=log, stderr=log))
        base = f"http://127.0.0.1:{args.port}"
        wait_http(f"{base}/readyz", procs[0])
        auth = {"Authorization": f"Bearer {key}"}

        body = "".join(json.dumps({"custom_id": str(i), "input": {"prompt": f"prompt {i}",
                                                                  "seed": i}}) + "\n"
                       for i in range(args.lines)).encode()
        defaults = json.dumps({"model": "tiny", "task": "generate"})
        started = time.perf_counter()
        r = requests.post(f"{base}/v1/batches", headers=auth, data={"defaults": defaults},
                          files={"file": ("jobs.jsonl", body)}, timeout=300)
        accept = time.perf_counter() - started
        r.raise_for_status()
        batch_id = r.json()["id"]

        procs.append(subprocess.Popen([*cli, "worker", "--model", "tiny", "--max-batch", "8"],
                                      env=env, stdout=log, stderr=log))
        engine = create_engine(db_url.replace("postgresql://", "postgresql+psycopg://"))
        while True:  # poll only once jobs are really running
            with engine.connect() as conn:
                if conn.scalar(select(Batch.n_running + Batch.n_succeeded).where(
                        Batch.id == batch_id)):
                    break
            time.sleep(0.5)
        session = requests.Session()
        session.headers.update(auth)
        latencies = []
        for _ in range(args.polls):
            t = time.perf_counter()
            session.get(f"{base}/v1/batches/{batch_id}", timeout=10).raise_for_status()
            latencies.append((time.perf_counter() - t) * 1000)
            time.sleep(0.01)
        counts = session.get(f"{base}/v1/batches/{batch_id}", timeout=10).json()["counts"]

        # The design choice, measured in the same process: counters vs an indexed aggregate.
        row_ms, agg_ms = [], []
        with engine.connect() as conn:
            for _ in range(200):
                t = time.perf_counter()
                conn.execute(select(Batch).where(Batch.id == batch_id)).one()
                row_ms.append((time.perf_counter() - t) * 1000)
                t = time.perf_counter()
                conn.execute(select(Job.status, func.count()).where(Job.batch_id == batch_id)
                             .group_by(Job.status)).all()
                agg_ms.append((time.perf_counter() - t) * 1000)
            pg = conn.scalar(text("SHOW server_version"))

        print(f"bulk upload: {args.lines} generate lines, Postgres {pg}, Redis, API under "
              f"gunicorn (2 processes), 1 tiny worker running")
        print()
        print("| measure | value |")
        print("|---|---|")
        print(f"| accept {args.lines} lines (POST /v1/batches, client-timed) | {accept:.2f} s |")
        print(f"| GET /v1/batches/{{id}} p50 while running ({args.polls} polls) | "
              f"{statistics.median(latencies):.1f} ms |")
        print(f"| GET /v1/batches/{{id}} p99 while running | {pct(latencies, 0.99):.1f} ms |")
        print(f"| batch progress during the polls | {counts} |")
        print()
        print("| batch counts read as | p50 ms | p99 ms |")
        print("|---|---|---|")
        print(f"| counters on the batch row | {statistics.median(row_ms):.2f} | "
              f"{pct(row_ms, 0.99):.2f} |")
        print(f"| GROUP BY over the jobs index | {statistics.median(agg_ms):.2f} | "
              f"{pct(agg_ms, 0.99):.2f} |")
        engine.dispose()


if __name__ == "__main__":
    main()
