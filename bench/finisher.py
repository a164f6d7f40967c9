"""What storing a finished row costs the engine's other rows: inline vs the finisher thread.

    python bench/finisher.py                     # 16 jobs, 4 slots, 384 px, 2 rounds
    python bench/finisher.py --jobs 32 --rounds 3

The worker's real job path in this process (bench/serve.py's `Service`: a scratch Postgres
database, PNGs on local disk, terminal states committed), a Janus-Pro model with the test
checkpoints' tiny LLM and VQ model at 384 px (576 image tokens, a real-size PNG per job).
`--jobs` jobs are queued at once and one `WorkerLoop.run` serves them all, alternately
with the store-and-commit of each finished row done inline on the engine's thread (as
before `service/workers/finisher.py`) and on the finisher's thread, in the same process.

Per mode: wall time and jobs/s for the whole queue, the engine thread's time per finished
row spent outside stepping (`_row_finished`: inline, the PNG encode, upload and commit;
with the finisher, a hand-off), and p50 latency (queued -> succeeded). Last line:
`engine_ms_per_finished_row_inline=<a> finisher=<b> jobs_per_s_ratio=<finisher/inline>`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `service` and `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.serve import MODEL, PROMPTS, Service  # noqa: E402


def serve_once(service: Service, mode: str, jobs: int) -> dict[str, float]:
    from sqlalchemy import select

    from service.core.db import session_scope
    from service.core.tables import Job
    from service.workers.finisher import Finisher
    from service.workers.handler import JobHandler
    from service.workers.loop import WorkerLoop

    ids = [service.submit({"prompt": PROMPTS[n % len(PROMPTS)], "seed": n})
           for n in range(jobs)]
    handler = JobHandler(service.settings, service.sessions, service.storage, MODEL,
                         f"bench-{mode}-{os.getpid()}")
    loop = WorkerLoop(handler, service.runner, service.max_batch, service.admit_every)
    loop.finisher = Finisher(service.max_batch, inline=(mode == "inline"))
    spent: list[float] = []
    finish = loop._row_finished

    def timed(*args: Any) -> None:
        began = time.perf_counter()
        finish(*args)
        spent.append(time.perf_counter() - began)

    loop._row_finished = timed  # type: ignore[method-assign]
    began = time.monotonic()
    while True:  # as the worker does: a task per wake-up until nothing is queued
        loop.run("")
        with session_scope(service.sessions) as session:
            rows = session.execute(select(Job.status, Job.created_at, Job.completed_at)
                                   .where(Job.id.in_(ids))).all()
        if all(r.status == "succeeded" for r in rows):
            break
        if any(r.status in ("failed", "canceled") for r in rows):
            raise SystemExit(f"{mode}: a job did not succeed: {[r.status for r in rows]}")
    wall = time.monotonic() - began
    latency = [(r.completed_at - r.created_at).total_seconds() for r in rows]
    return {"wall": wall, "jobs_per_s": jobs / wall, "p50": statistics.median(latency),
            "row_ms": 1000 * statistics.mean(spent)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=16)
    parser.add_argument("--max-batch", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--pg-admin", default=os.environ.get(
        "TEST_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres"))
    args = parser.parse_args(argv)

    import torch

    from service.models import runners
    from service.models.checkpoints.tiny import write_tiny_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        path = write_tiny_checkpoint("janus-pro", os.path.join(tmp, "ckpt"), image_size=384)
        runner = runners.load_runner(path, device="cpu", model_id=MODEL)
        service = Service(args.pg_admin, tmp, runner, args.max_batch, admit_every=4)
        try:
            cpu = _cpu()
            print(f"finisher: janus-pro tiny LLM, 384 px, jobs={args.jobs} "
                  f"slots={args.max_batch} threads={torch.get_num_threads()} cpu={cpu!r} "
                  f"load={' '.join(f'{x:.1f}' for x in os.getloadavg())}")
            serve_once(service, "inline", args.max_batch)  # warm-up: caches, connections
            results: dict[str, list[dict[str, float]]] = {"inline": [], "finisher": []}
            for _ in range(args.rounds):
                for mode in results:
                    results[mode].append(serve_once(service, mode, args.jobs))
        finally:
            service.close()
    print(f"{'mode':9} | {'wall s':>7} | {'jobs/s':>7} | {'p50 s':>6} | engine ms/finished row")
    print("-" * 62)
    best = {}
    for mode, runs in results.items():
        for r in runs:
            print(f"{mode:9} | {r['wall']:7.2f} | {r['jobs_per_s']:7.2f} | {r['p50']:6.2f} | "
                  f"{r['row_ms']:8.2f}")
        best[mode] = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    print(f"load after: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print(f"engine_ms_per_finished_row_inline={best['inline']['row_ms']:.2f} "
          f"finisher={best['finisher']['row_ms']:.2f} "
          f"jobs_per_s_ratio={best['finisher']['jobs_per_s'] / best['inline']['jobs_per_s']:.2f}")


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


if __name__ == "__main__":
    main()
