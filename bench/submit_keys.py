"""What immediate key revocation costs a submit (and a poll): the per-request version check.

Runs the API in this process (Flask's test client, no HTTP) on a fresh Postgres
database and Redis, rate limit off, jobs queued for a model no worker serves. Three
ways to check the key, interleaved round by round so machine noise hits all alike:

- `version`: this service: the key cache, trusted only under the current revocation
  version (one Redis GET per request);
- `cache-only`: the former 30 s cache with no version check (revocation not immediate);
- `no-cache`: a database lookup of the key on every request.

    python bench/submit_keys.py [--requests 2000] [--rounds 5]

Prints a table; nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from service.core.settings import Settings  # noqa: E402
from service.keys.revocation import KeyVersion  # noqa: E402

PG_ADMIN = os.environ.get("BENCH_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/13")
MODES = ("version", "cache-only", "no-cache")


def _mode(name: str, real_read):  # type: ignore[no-untyped-def]
    if name == "version":
        return real_read
    if name == "cache-only":
        return lambda self: "constant"
    return lambda self: None


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=2000, help="per mode and round")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    from service.api import create_app
    from service.core.db import make_db, make_sessionmaker, session_scope
    from service.entry.migrate import upgrade
    from service.keys.store import create_key

    name = f"janus_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    work = Path(tempfile.mkdtemp(prefix="janus-bench-"))
    try:
        settings = Settings(
            database_url=PG_ADMIN.rsplit("/", 1)[0] + f"/{name}", broker_url=REDIS,
            storage_url=f"file://{work / 'storage'}", data_dir=work,
            broker_key_prefix=f"bench{uuid.uuid4().hex[:6]}:", rate_limit_per_minute=0,
            models={"idle": str(work / "no-checkpoint")}, log_level="WARNING",
        )
        upgrade(settings.database_url)
        engine = make_db(settings.database_url)
        with session_scope(make_sessionmaker(engine)) as session:
            key = create_key(session=session, name="bench").key
        engine.dispose()
        client = create_app(settings).test_client()
        auth = {"Authorization": f"Bearer {key}"}
        body = {"model": "idle", "task": "generate", "input": {"prompt": "a fox", "seed": 1}}
        job_id = client.post("/v1/jobs", json=body, headers=auth).json["id"]

        real_read = KeyVersion.read
        submit: dict[str, list[float]] = {m: [] for m in MODES}
        poll: dict[str, list[float]] = {m: [] for m in MODES}
        version_get: list[float] = []
        versions = KeyVersion(settings)
        for _ in range(args.rounds):
            for mode in MODES:
                KeyVersion.read = _mode(mode, real_read)  # type: ignore[method-assign]
                for _ in range(args.requests):
                    t = time.perf_counter()
                    r = client.post("/v1/jobs", json=body, headers=auth)
                    submit[mode].append((time.perf_counter() - t) * 1000)
                    assert r.status_code == 202, r.json
                    t = time.perf_counter()
                    r = client.get(f"/v1/jobs/{job_id}", headers=auth)
                    poll[mode].append((time.perf_counter() - t) * 1000)
                    assert r.status_code == 200, r.json
            KeyVersion.read = real_read  # type: ignore[method-assign]
            for _ in range(args.requests):
                t = time.perf_counter()
                versions.read()
                version_get.append((time.perf_counter() - t) * 1000)

        load = os.getloadavg()
        print(f"{args.rounds} rounds x {args.requests} requests per mode; in-process API, "
              f"Postgres + Redis on loopback; load average {load[0]:.1f} {load[1]:.1f}")
        print()
        print("| key check | POST /v1/jobs p50 ms | mean ms | GET /v1/jobs/{id} p50 ms | mean ms |")
        print("|---|---|---|---|---|")
        for mode in MODES:
            print(f"| {mode} | {statistics.median(submit[mode]):.3f} | "
                  f"{statistics.fmean(submit[mode]):.3f} | {statistics.median(poll[mode]):.3f} | "
                  f"{statistics.fmean(poll[mode]):.3f} |")
        print()
        print(f"revocation version read alone (Redis GET): p50 "
              f"{statistics.median(version_get):.3f} ms, "
              f"mean {statistics.fmean(version_get):.3f} ms")
        base = statistics.median(submit["cache-only"])
        print(f"submit_cost_of_immediate_revocation_ms="
              f"{statistics.median(submit['version']) - base:.3f}")
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
