"""Cancel → `canceled` latency of a running job, measured from outside.

Starts, on this machine: a fresh Postgres database (migrated), a private Redis (a free
port, stopped at the end), `janus-service api` (one process) and one worker (the
continuous engine) serving a tiny random Janus-Pro checkpoint at 384 px (576 image
tokens per image: a job runs for seconds). Then, `--rounds` times: submit a job, wait
until it runs, wait a random 0–`--jitter` s more (so cancels land at every point of
the worker's renewal period), POST /v1/jobs/{id}/cancel, and hold
`GET /v1/jobs/{id}` with `Prefer: wait` until it ends. The latency is from just before
the cancel request to the answer that shows `canceled`.

`--code DIR` runs the service from another checkout (e.g. `git archive main | tar -x -C
DIR`) to measure the code before a change with the same script.

Prints one line per round, then a summary:

    canceled=<n>/<rounds> p50_ms=<p50> p90_ms=<p90> max_ms=<max> lease_seconds=<s>

    python bench/cancels.py [--rounds 10] [--lease-seconds 60] [--code DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

import requests

# `--code DIR`: import `service` from DIR, not from the installed checkout.
BOOT = """import sys
sys.meta_path[:] = [f for f in sys.meta_path if "Editable" not in getattr(f, "__name__", "")]
sys.path.insert(0, sys.argv[1])
import service
if sys.argv[2:] == ["where"]:
    print(service.__path__[0])
    raise SystemExit(0)
from service.entry.cli import main
main(sys.argv[2:])
"""
if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.scratch import Scratch, free_port  # noqa: E402


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def wait_up(base: str, procs: list[subprocess.Popen], work: Path) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if any(p.poll() is not None for p in procs):
            raise SystemExit(f"a service process exited; see the logs in {work}")
        try:
            if requests.get(f"{base}/readyz", timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.3)
    raise SystemExit(f"the API did not start; see {work}")


def main() -> None:  # noqa: PLR0915 - one straight setup, measure, tear down
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--lease-seconds", type=float, default=60.0,
                        help="JANUS_LEASE_SECONDS (renewals every lease/3, at most 5 s)")
    parser.add_argument("--jitter", type=float, default=2.0,
                        help="cancel a random 0..N s after the job starts running")
    parser.add_argument("--num-images", type=int, default=4)
    parser.add_argument("--code", help="run the service from this checkout instead")
    parser.add_argument("--port", type=int, default=0, help="API port (0: a free one)")
    args = parser.parse_args()

    redis_port, port = free_port(), args.port or free_port()
    with Scratch(redis_port=redis_port, prefix="janus-bench-cancel-") as stack:
        db_url, work, procs = stack.db_url, stack.work, stack.procs
        cli = [sys.executable, "-m", "service.entry.cli"]
        if args.code:  # this checkout's editable install would win over PYTHONPATH
            cli = [sys.executable, "-c", BOOT, str(Path(args.code).resolve())]
        env = {**os.environ, "JANUS_DATABASE_URL": db_url,
               "JANUS_BROKER_URL": f"redis://127.0.0.1:{redis_port}/0",
               "JANUS_STORAGE_URL": f"file://{work / 'storage'}", "JANUS_DATA_DIR": str(work),
               "JANUS_MODELS": json.dumps({"slow": str(work / "tiny")}),
               "JANUS_LEASE_SECONDS": str(args.lease_seconds),
               "JANUS_RATE_LIMIT_PER_MINUTE": "0", "OMP_NUM_THREADS": "1"}
        run = {"env": env, "check": True, "capture_output": True, "text": True}
        where = subprocess.run([*cli, "where"], **run).stdout.strip() if args.code else \
            str(Path(__file__).resolve().parent.parent / "service")
        subprocess.run([*cli, "tiny-checkpoint", "--family", "janus-pro", "--image-size", "384",
                        str(work / "tiny")], **run)
        subprocess.run([*cli, "migrate"], **run)
        key = json.loads(subprocess.run([*cli, "keys", "create", "--name", "bench", "--json"],
                                        **run).stdout)["key"]
        for label, command in (("api", ["api", "--port", str(port), "--workers", "1"]),
                               ("worker", ["worker", "--model", "slow"])):
            log = open(work / f"{label}.log", "w")  # noqa: SIM115
            procs.append(subprocess.Popen([*cli, *command], env=env, stdout=log, stderr=log))
        base = f"http://127.0.0.1:{port}"
        wait_up(base, procs, work)
        auth = {"Authorization": f"Bearer {key}"}
        http = requests.Session()

        def job_status(job_id: str, wait: int = 0) -> dict:
            headers = {**auth, "Prefer": f"wait={wait}"} if wait else auth
            return http.get(f"{base}/v1/jobs/{job_id}", headers=headers, timeout=wait + 30).json()

        print(f"# service code: {where}; lease {args.lease_seconds:g} s (renewals every "
              f"{max(0.2, min(args.lease_seconds / 3, 5.0)):g} s); {os.cpu_count()} CPUs, "
              f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}", flush=True)
        rng = random.Random(7)
        latencies: list[float] = []
        body = {"model": "slow", "task": "generate",
                "input": {"prompt": "a fox", "num_images": args.num_images}}
        for n in range(args.rounds):
            job = http.post(f"{base}/v1/jobs", json=body, headers=auth, timeout=30).json()
            started = time.monotonic()
            while job_status(job["id"])["status"] == "queued":
                if time.monotonic() - started > 300:
                    raise SystemExit("the worker never started the job")
                time.sleep(0.05)
            time.sleep(rng.uniform(0, args.jitter))
            t0 = time.perf_counter()
            http.post(f"{base}/v1/jobs/{job['id']}/cancel", headers=auth, timeout=30)
            while (got := job_status(job["id"], wait=30))["status"] in ("queued", "running"):
                pass
            ms = (time.perf_counter() - t0) * 1000
            if got["status"] == "canceled":
                latencies.append(ms)
            print(f"round {n}: {got['status']} after {ms:.0f} ms", flush=True)
        load = " ".join(f"{x:.1f}" for x in os.getloadavg())
        if latencies:
            print(f"canceled={len(latencies)}/{args.rounds} "
                  f"p50_ms={statistics.median(latencies):.0f} p90_ms={pct(latencies, .9):.0f} "
                  f"max_ms={max(latencies):.0f} lease_seconds={args.lease_seconds:g} "
                  f"load_average_end={load}")
        else:
            print(f"canceled=0/{args.rounds}: every job finished before its cancel landed")


if __name__ == "__main__":
    main()
