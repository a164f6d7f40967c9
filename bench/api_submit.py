"""POST /v1/jobs against a bare floor app, served the same way, measured side by side.

Starts, on this machine: a fresh Postgres database (migrated), a private Redis
(`redis-server --port 6393`, or BENCH_REDIS_PORT; stopped at the end), and two HTTP
apps under gunicorn with the same workers and worker class (`--worker-class`: gevent,
as `janus-service api` serves by default, or gthread with 16 threads; access log on):

- `api`: the real service, `janus-service api`, a tiny janus-pro checkpoint in
  JANUS_MODELS (the API reads only its config), rate limiting off, no worker;
- `floor`: a bare Flask app (below) whose POST does one committed INSERT and one LPUSH.

Each run posts the same generate body for a fixed time with `wrk` (or, without it, a
closed-loop Python client on persistent connections). Runs are interleaved (floor, api,
floor, api, ...) at 1 and 4 connections so machine noise hits both alike, and the
queued rows (and their queue counts) are deleted between runs so every run starts
from an empty queue. `--compare NAME=PATH` also serves the API of another checkout
(e.g. an extracted tree of main) in the same rounds, for a before/after on the same
load. Each row also shows the CPU time per request of the app's processes, of the
Postgres backends of the bench database and of the bench's Redis (other work on the
machine is not counted), which says where a submit's cost lands even when a shared
machine makes the latencies noisy. Prints a table, then last:

    submit_p50_ratio=<api p50 / floor p50 at c1> submit_rps_ratio_c4=<api rps / floor rps at c4>

    python bench/api_submit.py [--seconds 10] [--rounds 2] [--compare main=/path/to/tree]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.scratch import Scratch  # noqa: E402

REDIS_PORT = int(os.environ.get("BENCH_REDIS_PORT", "6393"))
BODY = {"model": "tiny", "task": "generate",
        "input": {"prompt": "a red fox in snow", "seed": 7}}
WORKERS, THREADS = 2, 16  # `janus-service api` defaults


def floor_app() -> Any:
    """The floor: what any submit must do at least, one committed INSERT and one LPUSH.

    gunicorn builds it in each worker (`bench.api_submit:floor_app()`), like the API.
    """
    import redis
    from flask import Flask, jsonify, request
    from sqlalchemy import create_engine, text

    engine = create_engine(os.environ["FLOOR_DATABASE_URL"], pool_size=10, max_overflow=20)
    broker = redis.Redis.from_url(os.environ["FLOOR_REDIS_URL"])
    app = Flask(__name__)

    @app.post("/v1/jobs")
    def submit() -> Any:
        body = request.get_json()
        job_id = uuid.uuid4().hex
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO floor_jobs (id, body) VALUES (:id, :body)"),
                         {"id": job_id, "body": json.dumps(body)})
        broker.lpush("floor.queue", job_id)
        return jsonify({"id": job_id, "status": "queued"}), 202

    return app


def run_wrk(url: str, headers: dict[str, str], conns: int, seconds: float) -> dict[str, float]:
    lines = [f'wrk.headers["{k}"] = "{v}"' for k, v in headers.items()]
    script = "\n".join(['wrk.method = "POST"', f"wrk.body = {json.dumps(json.dumps(BODY))}",
                        *lines])
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(script)
    try:
        out = subprocess.run(["wrk", "-t", str(min(conns, 2)), "-c", str(conns),
                              "-d", f"{int(seconds)}s", "--latency", "-s", f.name, url],
                             capture_output=True, text=True, check=True).stdout
    finally:
        os.unlink(f.name)
    if "Non-2xx" in out:
        raise SystemExit(f"errors under load:\n{out}")

    def ms(label: str) -> float:
        value, unit = re.search(rf"^\s*{label}\s+([\d.]+)(us|ms|s)\s*$", out, re.M).groups()
        return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    return {"p50": ms("50%"), "p99": ms("99%"), "rps": rps}


def run_python(url: str, headers: dict[str, str], conns: int, seconds: float) -> dict[str, float]:
    """Closed loop: `conns` threads, one persistent connection each, for `seconds`."""
    host, port = url.split("//")[1].split("/")[0].split(":")
    body = json.dumps(BODY).encode()
    latencies: list[float] = []
    stop = time.monotonic() + seconds

    def client() -> None:
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        mine = []
        while time.monotonic() < stop:
            t = time.perf_counter()
            conn.request("POST", "/v1/jobs", body, headers)
            response = conn.getresponse()
            response.read()
            if response.status != 202:
                raise SystemExit(f"status {response.status}")
            mine.append((time.perf_counter() - t) * 1000)
        latencies.extend(mine)

    threads = [threading.Thread(target=client) for _ in range(conns)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ordered = sorted(latencies)
    return {"p50": statistics.median(ordered), "p99": ordered[int(0.99 * (len(ordered) - 1))],
            "rps": len(ordered) / (time.monotonic() - started)}


def cpu_seconds(app_pid: int, redis_pid: int, db_url: str, db_name: str) -> dict[str, Any]:
    """CPU time used so far by an app's processes (gunicorn and its workers), by each
    Postgres backend connected to the bench database, and by the bench's Redis.

    Per request, it says which process a submit's cost lands in; other work on the
    machine (other databases, other processes) is not counted.
    """
    import psutil
    import psycopg

    def used(proc: psutil.Process) -> float:
        try:
            times = proc.cpu_times()
        except psutil.NoSuchProcess:
            return 0.0
        return times.user + times.system

    app = psutil.Process(app_pid)
    with psycopg.connect(db_url, autocommit=True) as conn:
        backends = [row[0] for row in conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            (db_name,))]
    postgres = {}
    for pid in backends:
        try:
            postgres[pid] = used(psutil.Process(pid))
        except psutil.NoSuchProcess:
            pass
    return {"app": sum(used(p) for p in [app, *app.children(recursive=True)]),
            "postgres": postgres, "redis": used(psutil.Process(redis_pid))}


def cpu_delta(before: dict[str, Any], after: dict[str, Any], requests: float) -> dict[str, float]:
    """Milliseconds of CPU per request in each part between two `cpu_seconds`."""
    postgres = sum(t - before["postgres"].get(pid, 0.0) for pid, t in after["postgres"].items())
    return {"cpu_app": (after["app"] - before["app"]) / requests * 1000,
            "cpu_postgres": postgres / requests * 1000,
            "cpu_redis": (after["redis"] - before["redis"]) / requests * 1000}


def wait_http(url: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    host, port = url.split("//")[1].split("/")[0].split(":")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"process for {url} exited")
        try:
            conn = http.client.HTTPConnection(host, int(port), timeout=5)
            conn.request("GET", url.split(port, 1)[1] or "/")
            conn.getresponse().read()
            return
        except OSError:
            time.sleep(0.3)
    raise SystemExit(f"{url} not ready")


def main() -> None:  # noqa: PLR0915 - one straight setup, measure, tear down
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--api-port", type=int, default=8771)
    parser.add_argument("--floor-port", type=int, default=8772)
    parser.add_argument("--python-client", action="store_true", help="even if wrk is there")
    parser.add_argument("--worker-class", choices=["gevent", "gthread"], default="gevent",
                        help="for every app (`janus-service api` serves with gevent by "
                             "default)")
    parser.add_argument("--compare", action="append", default=[], metavar="NAME=PATH",
                        help="also serve the API of another checkout (e.g. main's tree) as "
                             "app NAME, measured in the same rounds")
    args = parser.parse_args()
    compare = dict(item.split("=", 1) for item in args.compare)
    load = run_python if args.python_client or not shutil.which("wrk") else run_wrk

    import psycopg

    redis_url = f"redis://127.0.0.1:{REDIS_PORT}/0"
    with Scratch(redis_port=REDIS_PORT) as stack:
        db_url, work, procs, name = stack.db_url, stack.work, stack.procs, stack.name
        bindir = Path(sys.executable).parent
        cli = [str(bindir / "janus-service")]
        ckpt = work / "tiny"
        env = {**os.environ, "JANUS_DATABASE_URL": db_url, "JANUS_BROKER_URL": redis_url,
               "JANUS_STORAGE_URL": f"file://{work / 'storage'}", "JANUS_DATA_DIR": str(work),
               "JANUS_MODELS": json.dumps({"tiny": str(ckpt)}), "JANUS_LOG_LEVEL": "WARNING",
               "JANUS_RATE_LIMIT_PER_MINUTE": "0", "FLOOR_DATABASE_URL": db_url.replace(
                   "postgresql://", "postgresql+psycopg://"), "FLOOR_REDIS_URL": redis_url,
               "PYTHONPATH": str(ROOT)}
        run = {"env": env, "check": True, "capture_output": True, "text": True}
        subprocess.run([*cli, "tiny-checkpoint", "--family", "janus-pro", str(ckpt)], **run)
        subprocess.run([*cli, "migrate"], **run)
        key = json.loads(subprocess.run([*cli, "keys", "create", "--name", "bench", "--json"],
                                        **run).stdout)["key"]
        with psycopg.connect(db_url, autocommit=True) as conn:
            conn.execute("CREATE TABLE floor_jobs (id text PRIMARY KEY, body jsonb NOT NULL, "
                         "created_at timestamptz NOT NULL DEFAULT now())")
        log = open(work / "services.log", "w")  # noqa: SIM115
        procs.append(subprocess.Popen(
            [*cli, "api", "--port", str(args.api_port), "--workers", str(WORKERS),
             "--threads", str(THREADS), "--worker-class", args.worker_class], env=env,
            stdout=log, stderr=log))
        procs.append(subprocess.Popen(
            [str(bindir / "gunicorn"), "-b", f"127.0.0.1:{args.floor_port}", "-w", str(WORKERS),
             "--threads", str(THREADS), "-k", args.worker_class, "--access-logfile", "-",
             "bench.api_submit:floor_app()"], env=env, stdout=log, stderr=log, cwd=ROOT))
        apps = {"floor": f"http://127.0.0.1:{args.floor_port}/v1/jobs",
                "api": f"http://127.0.0.1:{args.api_port}/v1/jobs"}
        for i, (app, path) in enumerate(compare.items()):
            port = args.api_port + 10 + i
            procs.append(subprocess.Popen(
                [sys.executable, "-c", "from service.entry.cli import main; main()", "api",
                 "--port", str(port), "--workers", str(WORKERS), "--threads", str(THREADS),
                 "--worker-class", args.worker_class],
                env={**env, "PYTHONPATH": path}, stdout=log, stderr=log, cwd=path))
            apps[app] = f"http://127.0.0.1:{port}/v1/jobs"
        wait_http(f"http://127.0.0.1:{args.api_port}/readyz", procs[0])
        wait_http(f"http://127.0.0.1:{args.floor_port}/", procs[1])
        for i, proc in enumerate(procs[2:]):
            wait_http(f"http://127.0.0.1:{args.api_port + 10 + i}/readyz", proc)
        servers = {"api": procs[0], "floor": procs[1],
                   **dict(zip(compare, procs[2:], strict=True))}
        redis_pid = int(re.search(r"process_id:(\d+)", subprocess.run(
            ["redis-cli", "-p", str(REDIS_PORT), "info", "server"], capture_output=True,
            text=True, check=True).stdout).group(1))
        headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}

        results: dict[tuple[str, int], list[dict[str, float]]] = {}
        for url in apps.values():  # warm both (connections, imports, caches)
            load(url, headers, 2, 2)
        for _ in range(args.rounds):
            for conns in (1, 4):
                for app, url in apps.items():
                    with psycopg.connect(db_url) as conn:  # one transaction: counts agree
                        conn.execute("DELETE FROM jobs")
                        conn.execute("DELETE FROM queue_counts")
                        conn.execute("DELETE FROM floor_jobs")
                    with psycopg.connect(db_url, autocommit=True) as conn:
                        conn.execute("VACUUM ANALYZE jobs")
                        conn.execute("VACUUM ANALYZE floor_jobs")
                        conn.execute("VACUUM ANALYZE queue_counts")
                    before = cpu_seconds(servers[app].pid, redis_pid, db_url, name)
                    result = load(url, headers, conns, args.seconds)
                    after = cpu_seconds(servers[app].pid, redis_pid, db_url, name)
                    result.update(cpu_delta(before, after, result["rps"] * args.seconds))
                    results.setdefault((app, conns), []).append(result)

        up = os.getloadavg()
        print(f"# {WORKERS} gunicorn {args.worker_class} workers ({THREADS} threads each with "
              f"gthread), Postgres + Redis on "
              f"loopback, {os.cpu_count()} CPUs, client {load.__name__}, {args.seconds:.0f} s "
              f"per run, {args.rounds} rounds interleaved, load average {up[0]:.1f}")
        print()
        print("| app | connections | p50 ms | p99 ms | requests/s | CPU ms per request: app "
              "/ postgres / redis | each run (p50 ms / rps) |")
        print("|---|---|---|---|---|---|---|")
        best: dict[tuple[str, int], dict[str, float]] = {}
        keys = ("p50", "p99", "rps", "cpu_app", "cpu_postgres", "cpu_redis")
        for (app, conns), runs in sorted(results.items(), key=lambda kv: (kv[0][1], kv[0][0])):
            best[(app, conns)] = summary = {
                k: statistics.median(r[k] for r in runs) for k in keys}
            print(f"| {app} | {conns} | {summary['p50']:.2f} | {summary['p99']:.2f} | "
                  f"{summary['rps']:.0f} | {summary['cpu_app']:.2f} / "
                  f"{summary['cpu_postgres']:.2f} / {summary['cpu_redis']:.2f} | "
                  + ", ".join(f"{r['p50']:.2f} / {r['rps']:.0f}" for r in runs) + " |")
        print()
        p50_ratio = best[("api", 1)]["p50"] / best[("floor", 1)]["p50"]
        rps_ratio = best[("api", 4)]["rps"] / best[("floor", 4)]["rps"]
        print(f"submit_p50_ratio={p50_ratio:.2f} submit_rps_ratio_c4={rps_ratio:.2f}")


if __name__ == "__main__":
    main()
