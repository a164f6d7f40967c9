"""Hundreds of `Prefer: wait` requests and event streams on one API host, measured from outside.

Starts, on this machine: a fresh Postgres database (migrated), a private Redis
(`--redis-port`, stopped at the end) and `janus-service api` (2 processes, the
default; `--worker-class gevent` by default, `gthread` for comparison). No worker:
the jobs stay queued until the benchmark cancels them. Then:

1. idle: GET /healthz and POST /v1/jobs, sequential, for their latencies;
2. `--waiters` clients hold `GET /v1/jobs/{id}` with `Prefer: wait=N` and `--streams`
   clients read `GET /v1/jobs/{id}/events`, spread over `--jobs` queued jobs; the
   benchmark waits until Redis lists that many readers blocked at once (the proof
   that they all wait together; a gthread server parks at most processes x threads);
3. the same /healthz and submit measurements while they wait;
4. cancel the jobs: every waiter and stream must answer; time from cancel to answer.

Prints the figures, last a summary line:

    waiters=<n parked> healthz_p99_ms=<loaded> submit_p50_ms=<loaded>
        submit_p50_idle_ms=<idle> answered=<n>/<n>   (one line)

    python bench/waiters.py [--waiters 200] [--streams 200] [--worker-class gevent]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import requests

if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.scratch import Scratch  # noqa: E402

BODY = {"model": "idle", "task": "generate", "input": {"prompt": "a red fox", "seed": 7}}


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def timed(fn, n: int) -> list[float]:  # type: ignore[no-untyped-def]
    """Latencies in ms; a request that fails or times out counts as the time it took."""
    out = []
    for _ in range(n):
        t = time.perf_counter()
        try:
            fn()
        except (requests.RequestException, AssertionError) as exc:
            print(f"  {fn.__name__}: {type(exc).__name__} after "
                  f"{time.perf_counter() - t:.1f} s", flush=True)
        out.append((time.perf_counter() - t) * 1000)
    return out


def parked(redis_port: int) -> int:
    import redis

    clients = redis.Redis(port=redis_port).client_list()
    return sum(1 for c in clients if c.get("cmd") == "xread" and "b" in c.get("flags", ""))


def main() -> None:  # noqa: PLR0915 - one straight setup, measure, tear down
    parser = argparse.ArgumentParser()
    parser.add_argument("--waiters", type=int, default=200)
    parser.add_argument("--streams", type=int, default=200)
    parser.add_argument("--jobs", type=int, default=20)
    parser.add_argument("--wait", type=int, default=60, help="Prefer: wait=N")
    parser.add_argument("--worker-class", default="gevent", choices=["gevent", "gthread"])
    parser.add_argument("--port", type=int, default=8781)
    parser.add_argument("--redis-port", type=int, default=6395)
    parser.add_argument("--samples", type=int, default=300, help="healthz requests per phase")
    args = parser.parse_args()

    with Scratch(redis_port=args.redis_port) as stack:
        db_url, work = stack.db_url, stack.work
        cli = [str(Path(sys.executable).parent / "janus-service")]
        env = {**os.environ, "JANUS_DATABASE_URL": db_url,
               "JANUS_BROKER_URL": f"redis://127.0.0.1:{args.redis_port}/0",
               "JANUS_STORAGE_URL": f"file://{work / 'storage'}", "JANUS_DATA_DIR": str(work),
               "JANUS_MODELS": json.dumps({"idle": str(work / "tiny")}),
               "JANUS_LOG_LEVEL": "WARNING", "JANUS_RATE_LIMIT_PER_MINUTE": "0"}
        run = {"env": env, "check": True, "capture_output": True, "text": True}
        subprocess.run([*cli, "tiny-checkpoint", "--family", "janus-pro", str(work / "tiny")],
                       **run)
        subprocess.run([*cli, "migrate"], **run)
        key = json.loads(subprocess.run([*cli, "keys", "create", "--name", "bench", "--json"],
                                        **run).stdout)["key"]
        log = open(work / "api.log", "w")  # noqa: SIM115
        api = subprocess.Popen([*cli, "api", "--port", str(args.port),
                                "--worker-class", args.worker_class], env=env,
                               stdout=log, stderr=log)
        stack.procs.append(api)
        base = f"http://127.0.0.1:{args.port}"
        auth = {"Authorization": f"Bearer {key}"}
        deadline = time.monotonic() + 60
        while True:
            try:
                if requests.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline or api.poll() is not None:
                raise SystemExit("the API did not start; see " + str(work / "api.log"))
            time.sleep(0.3)

        health, submit = requests.Session(), requests.Session()

        def healthz() -> None:
            assert health.get(f"{base}/healthz", timeout=60).status_code == 200

        def post() -> None:
            assert submit.post(f"{base}/v1/jobs", json=BODY, headers=auth,
                               timeout=60).status_code == 202

        timed(healthz, 50), timed(post, 20)  # warm both processes
        idle_health, idle_submit = timed(healthz, args.samples), timed(post, 100)

        jobs = [requests.post(f"{base}/v1/jobs", json=BODY, headers=auth).json()["id"]
                for _ in range(args.jobs)]
        done: list[float] = []
        failures: list[str] = []
        canceled_at = [0.0]

        def wait(n: int) -> None:
            try:
                r = requests.get(f"{base}/v1/jobs/{jobs[n % args.jobs]}",
                                 headers={**auth, "Prefer": f"wait={args.wait}"}, timeout=300)
                if r.json().get("status") == "canceled":
                    done.append(time.monotonic())
                else:
                    failures.append(r.json().get("status", r.text[:60]))
            except requests.RequestException as exc:
                failures.append(type(exc).__name__)

        def stream(n: int) -> None:
            try:
                with requests.get(f"{base}/v1/jobs/{jobs[n % args.jobs]}/events", headers=auth,
                                  stream=True, timeout=300) as r:
                    for line in r.iter_lines(decode_unicode=True):
                        if line == "event: completed":
                            done.append(time.monotonic())
                            return
                failures.append("stream ended without completed")
            except requests.RequestException as exc:
                failures.append(type(exc).__name__)

        threads = [threading.Thread(target=wait, args=(n,), daemon=True)
                   for n in range(args.waiters)]
        threads += [threading.Thread(target=stream, args=(n,), daemon=True)
                    for n in range(args.streams)]
        for t in threads:
            t.start()
        total = args.waiters + args.streams
        most, until = 0, time.monotonic() + 60
        while time.monotonic() < until and most < total:
            most = max(most, parked(args.redis_port))
            time.sleep(0.05)
        busy_health = timed(healthz, args.samples)
        busy_submit = timed(post, min(100, args.samples))
        canceled_at[0] = time.monotonic()
        for job_id in jobs:
            requests.post(f"{base}/v1/jobs/{job_id}/cancel", headers=auth, timeout=120)
        for t in threads:
            t.join(args.wait + 60)
        answers = [(t - canceled_at[0]) * 1000 for t in done]

        print(f"# janus-service api --worker-class {args.worker_class} (2 processes), "
              f"Postgres + Redis on loopback, {os.cpu_count()} CPUs, "
              f"load average {os.getloadavg()[0]:.1f}; client: one thread per waiter")
        print(f"waiting clients: {args.waiters} Prefer: wait={args.wait} + {args.streams} "
              f"event streams over {args.jobs} queued jobs; parked in Redis at once: {most}")
        for label, idle, busy in (("healthz", idle_health, busy_health),
                                  ("submit", idle_submit, busy_submit)):
            print(f"{label}_ms idle p50={statistics.median(idle):.2f} p99={pct(idle, .99):.2f}"
                  f" | with waiters p50={statistics.median(busy):.2f} "
                  f"p99={pct(busy, .99):.2f} max={max(busy):.2f}")
        if answers:
            print(f"answered after cancel: {len(answers)}/{total}, ms p50="
                  f"{statistics.median(answers):.0f} p99={pct(answers, .99):.0f} "
                  f"max={max(answers):.0f}; failures: {len(failures)} {sorted(set(failures))}")
        print(f"waiters={most} healthz_p99_ms={pct(busy_health, .99):.2f} "
              f"submit_p50_ms={statistics.median(busy_submit):.2f} "
              f"submit_p50_idle_ms={statistics.median(idle_submit):.2f} "
              f"answered={len(answers)}/{total}")


if __name__ == "__main__":
    main()
