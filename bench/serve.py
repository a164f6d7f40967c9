"""Serving latency under load: run-to-completion batching vs the continuous engine.

    python bench/serve.py --family janus-pro --shape small --device cpu
    python bench/serve.py --family janusflow --shape small --device cpu
    python bench/serve.py --family janus-pro --quick          # CI: tiny model, few jobs

Drives a worker's real job path in this process: jobs inserted as the API inserts them into
a real Postgres database (a scratch one, dropped at the end), claimed by the worker's loop
(`WorkerLoop`; `static` is its run-to-completion mode over the same engine: claims only
when nothing runs, images decoded inside the step), PNGs stored on local disk, terminal
states committed. No HTTP and no broker: a wake-up is a 5 ms poll, the same for both
modes. Random-weight models of `--shape` (bench/generate.py's shapes).

First the batched capacity is measured (`--max-batch` jobs as one batch run to completion
on the engine: jobs/s).
Then, for loads 0.3, 0.6 and 0.9 of that capacity, `--jobs` single-image jobs arrive as an
open-loop Poisson process (the same arrival times for both modes), once through static
batching and once through the engine. Per rate and mode: p50/p95 latency (arrival ->
succeeded) and images/s (images / (last completion - first arrival)). The last line:
`p50_latency_ratio_static_vs_continuous=<x> throughput_ratio=<y>` at 0.6 load
(x: static p50 / continuous p50; y: continuous images/s / static images/s).
`--capacity J` takes J jobs/s as the capacity instead (the same seed and loads then give
the same arrival times as a run that measured J, e.g. at another `--max-batch`).
`--modes static,inline,continuous` adds the engine with each finished row's images
decoded inside its step (as before the worker's finisher decoded them) and a line
comparing it with `continuous` just before the last.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `service` and `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from service.models.engine import run_batch  # noqa: E402

MODEL = "bench-model"
LOADS = (0.3, 0.6, 0.9)
PROMPTS = ["a red cat sitting on a chair", "a lighthouse on a cliff above a stormy sea",
           "a dog", "an astronaut riding a horse", "a bowl of fruit on a wooden table"]


def make_runner(family: str, shape: str, device: str, tmp: str) -> Any:
    """A runner with random weights of `shape` ("tiny": the test checkpoints' shape)."""
    from service.models.checkpoints.tiny import write_tiny_checkpoint
    from service.models.runners import load_runner

    size = 64 if shape == "tiny" else 384
    path = write_tiny_checkpoint(family, os.path.join(tmp, "ckpt"), image_size=size)
    runner = load_runner(path, device=device)
    if shape == "tiny":
        return runner
    if family == "janusflow":
        return _janusflow_shape(runner, shape, device)
    import torch

    from bench.generate import build

    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    model, processor = build(shape, device, dtype)
    runner.attach(model, processor)
    return runner


def _janusflow_shape(runner: Any, shape: str, device: str) -> Any:
    """The tiny runner (tokenizer, image settings) with bench.generate_janusflow's model."""
    import torch
    from diffusers import AutoencoderKL

    from bench.generate_janusflow import _config
    from service.models.janusflow.config import parse_config
    from service.models.janusflow.load import build_model
    from service.models.janusflow.sampler import FlowSampler

    raw, vae_kwargs = _config(shape)
    raw["language_config"]["vocab_size"] = runner.model.language_model.config.vocab_size
    config = parse_config(raw)
    torch.manual_seed(0)
    model = build_model(config, device, runner.attention()).to(runner.dtype).eval()
    with torch.device(device):
        vae = AutoencoderKL(**vae_kwargs).eval().to(runner.dtype)
    runner.make_invariant(model, vae)
    latent, grid = config.latent_grid(2 ** (len(vae_kwargs["block_out_channels"]) - 1))
    runner.model, runner.vae = model, vae
    runner.sampler = FlowSampler(model, latent=latent, grid=grid, bos_id=runner.sampler.bos_id,
                                 pad_id=runner.sampler.pad_id, device=device,
                                 dtype=runner.dtype)
    return runner


class Service:
    """A scratch Postgres database, local storage, and the worker's job path."""

    def __init__(self, admin_url: str, tmp: str, runner: Any, max_batch: int,
                 admit_every: int) -> None:
        import psycopg

        from service.core.db import make_db, make_sessionmaker, session_scope
        from service.core.settings import Settings
        from service.core.storage import storage_from_settings
        from service.entry.migrate import upgrade
        from service.keys.store import create_key

        self.admin_url = admin_url
        self.db = f"bench_serve_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self.db}"')
        url = admin_url.rsplit("/", 1)[0] + f"/{self.db}"
        self.settings = Settings(data_dir=Path(tmp) / "data", database_url=url,
                                 storage_url=f"file://{tmp}/storage", models={MODEL: "bench"},
                                 secret_key="bench", lease_seconds=120)
        upgrade(self.settings.database_url)
        self.engine = make_db(self.settings.database_url)
        self.sessions = make_sessionmaker(self.engine)
        self.storage = storage_from_settings(self.settings)
        with session_scope(self.sessions) as session:
            self.key_id = create_key(session=session, name="bench").id
        self.runner, self.max_batch, self.admit_every = runner, max_batch, admit_every

    def close(self) -> None:
        import psycopg

        self.engine.dispose()
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.db}" WITH (FORCE)')

    def submit(self, task_input: dict[str, Any]) -> str:
        from service.lifecycle.jobs import JobSpec, create_job

        job, _position = create_job(db=self.engine, storage=self.storage,
                                    api_key_id=self.key_id,
                                    spec=JobSpec(model=MODEL, task="generate", input=task_input))
        return job.id

    def run(self, mode: str, arrivals: list[float], inputs: list[dict]) -> dict[str, float]:
        """Submit at `arrivals` (seconds from now) while a worker thread serves; stats."""
        from sqlalchemy import select

        from service.core.db import session_scope
        from service.core.tables import Job
        from service.workers.handler import JobHandler
        from service.workers.loop import WorkerLoop

        handler = JobHandler(self.settings, self.sessions, self.storage, MODEL,
                             f"bench-{mode}-{uuid.uuid4().hex[:6]}")
        loop = WorkerLoop(handler, self.runner, self.max_batch, self.admit_every,
                          defer_decode=mode == "continuous",
                          run_to_completion=mode == "static")
        stop = threading.Event()

        def serve() -> None:
            while not stop.is_set():
                loop.run("")  # returns once idle: no running job, nothing queued
                stop.wait(0.005)  # the next wake-up

        worker = threading.Thread(target=serve, daemon=True)
        worker.start()
        ids, start = [], time.monotonic()
        for at, task_input in zip(arrivals, inputs, strict=True):
            delay = start + at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            ids.append(self.submit(task_input))
        while True:
            with session_scope(self.sessions) as session:
                rows = session.execute(select(Job.status, Job.created_at, Job.completed_at,
                                              Job.input).where(Job.id.in_(ids))).all()
            if all(r.status in ("succeeded", "failed", "canceled") for r in rows):
                break
            time.sleep(0.05)
        stop.set()
        worker.join()
        bad = [r.status for r in rows if r.status != "succeeded"]
        assert not bad, f"{mode}: jobs ended {bad}"
        latencies = sorted((r.completed_at - r.created_at).total_seconds() for r in rows)
        span = (max(r.completed_at for r in rows) - min(r.created_at for r in rows))
        images = sum(r.input.get("num_images", 1) for r in rows)
        return {"p50": statistics.median(latencies),
                "p95": latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))],
                "images_per_s": images / span.total_seconds()}


class MemoryService:
    """`--no-db` (a GPU machine has no Postgres): the same two modes over an in-memory
    queue, calling the runner directly (static: `run_batch` on up to max-batch queued jobs;
    continuous: its engine, admitting every `admit_every` steps, finished rows decoded on
    a thread of their own as the worker's finisher does). No storage, no SQL:
    latency is arrival -> result, the model's share of the service's."""

    def __init__(self, runner: Any, max_batch: int, admit_every: int) -> None:
        self.runner, self.max_batch, self.admit_every = runner, max_batch, admit_every

    def close(self) -> None:
        return None

    def run(self, mode: str, arrivals: list[float], inputs: list[dict]) -> dict[str, float]:
        from service.models.base import GenerateRequest, GenerateResult

        queue: list[tuple[int, Any]] = []
        lock = threading.Lock()
        done: dict[int, float] = {}
        arrived: dict[int, float] = {}
        requests = [GenerateRequest(i["prompt"], seed=i["seed"]) for i in inputs]

        def take(limit: int) -> list[tuple[int, Any]]:
            with lock:
                taken = queue[:limit]
                del queue[:limit]
            return taken

        from service.models.engine import finish as finish_row

        errors: list[Any] = []

        def finish(n: int, result: Any) -> None:
            result = finish_row(result, n)  # a `Deferred` is decoded here
            if not isinstance(result, GenerateResult):
                errors.append(result)  # seen after the run: a future would swallow it
            done[n] = time.monotonic()

        def serve() -> None:
            engine = self.runner.open_engine("generate", self.max_batch) \
                if mode in ("continuous", "inline") else None
            if engine is not None:  # decoded on a thread of its own, as the worker does
                engine.defer = mode == "continuous"
            steps = 0
            while len(done) < len(inputs):
                if engine is None:
                    batch = take(self.max_batch)
                    if batch:
                        results = run_batch(self.runner, "generate", [r for _, r in batch])
                        for (n, _), result in zip(batch, results, strict=True):
                            assert isinstance(result, GenerateResult), result
                            done[n] = time.monotonic()
                    else:
                        time.sleep(0.005)
                    continue
                if not engine.active() or steps % self.admit_every == 0:
                    assert not engine.admit(take(engine.free_slots()))
                if not engine.active():
                    time.sleep(0.005)
                    continue
                for n, result in engine.step():
                    finisher.submit(finish, n, result) if engine.defer else finish(n, result)
                steps += 1

        finisher = ThreadPoolExecutor(1)  # the worker's finisher (service/workers/finisher.py)
        worker = threading.Thread(target=serve, daemon=True)
        worker.start()
        start = time.monotonic()
        for n, (at, request) in enumerate(zip(arrivals, requests, strict=True)):
            delay = start + at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            arrived[n] = time.monotonic()
            with lock:
                queue.append((n, request))
        worker.join()
        finisher.shutdown(wait=True)
        assert not errors, errors
        latencies = sorted(done[n] - arrived[n] for n in done)
        return {"p50": statistics.median(latencies),
                "p95": latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))],
                "images_per_s": len(done) / (max(done.values()) - min(arrived.values()))}


def capacity(runner: Any, max_batch: int, inputs: list[dict]) -> float:
    """Jobs/s of one batch of `max_batch` jobs run to completion (the best of two, after a
    warm-up)."""
    from service.models.base import GenerateRequest

    batch = [GenerateRequest(i["prompt"], seed=i["seed"]) for i in inputs[:max_batch]]
    run_batch(runner, "generate", batch[:1])
    best = float("inf")
    for _ in range(2):
        started = time.perf_counter()
        run_batch(runner, "generate", batch)
        best = min(best, time.perf_counter() - started)
    return len(batch) / best


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", choices=["janus-pro", "janusflow"], default="janus-pro")
    parser.add_argument("--shape", choices=["tiny", "small", "1b", "7b"], default="small")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--jobs", type=int, default=40, help="jobs per rate and mode")
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--admit-every", type=int, default=4)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pg-admin", default=os.environ.get(
        "TEST_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres"))
    parser.add_argument("--loads", default=",".join(map(str, LOADS)),
                        help="comma-separated fractions of capacity (the summary needs 0.6)")
    parser.add_argument("--no-db", action="store_true",
                        help="no Postgres: an in-memory queue and the runner only")
    parser.add_argument("--modes", default="static,continuous",
                        help="of static, continuous, inline (the engine decoding finished "
                             "rows inside its step, not on the finisher's thread)")
    parser.add_argument("--capacity", type=float, default=0.0,
                        help="jobs/s to take as capacity instead of measuring it (the same "
                             "arrival times as another run's, e.g. at another --max-batch)")
    parser.add_argument("--quick", action="store_true",
                        help="CI: the tiny shape, 6 jobs per rate, batches of 4")
    args = parser.parse_args(argv)
    if args.quick:
        args.shape, args.jobs, args.max_batch = "tiny", min(args.jobs, 6), min(args.max_batch, 4)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    import logging

    logging.disable(logging.WARNING)  # a job line per terminal state would drown the table

    from bench.generate import _cpu_model, _load

    rng = random.Random(args.seed)
    inputs = [{"prompt": PROMPTS[i % len(PROMPTS)], "num_images": 1, "seed": 1000 + i}
              for i in range(args.jobs)]
    with tempfile.TemporaryDirectory() as tmp:
        runner = make_runner(args.family, args.shape, args.device, tmp)
        cap = args.capacity or capacity(runner, args.max_batch, inputs)
        service: Any = MemoryService(runner, args.max_batch, args.admit_every) if args.no_db \
            else Service(args.pg_admin, tmp, runner, args.max_batch, args.admit_every)
        print(f"serve: family={args.family} shape={args.shape} device={args.device} "
              f"max_batch={args.max_batch} admit_every={args.admit_every} jobs/rate={args.jobs} "
              f"threads={torch.get_num_threads()} cpu={_cpu_model()!r} load={_load()} "
              f"path={'runner only (--no-db)' if args.no_db else 'Postgres + worker code'}")
        print(f"batched capacity: {cap:.3f} jobs/s " + (
            "(given)" if args.capacity else f"({args.max_batch} jobs run to completion)"))
        header = "load | rate jobs/s | mode       | p50 s  | p95 s  | images/s"
        print(header)
        print("-" * len(header))
        at_06: dict[str, dict[str, float]] = {}
        try:
            for load in [float(x) for x in args.loads.split(",")]:
                rate = load * cap
                gaps = [rng.expovariate(rate) for _ in inputs]
                arrivals = [sum(gaps[:i]) for i in range(len(gaps))]
                for mode in args.modes.split(","):
                    stats = service.run(mode, arrivals, inputs)
                    if load == 0.6:
                        at_06[mode] = stats
                    print(f"{load:4.1f} | {rate:11.3f} | {mode:10s} | {stats['p50']:6.2f} | "
                          f"{stats['p95']:6.2f} | {stats['images_per_s']:8.3f}", flush=True)
        finally:
            service.close()
    print(f"load after: {_load()}")
    if not {"static", "continuous"} <= set(at_06):
        print("(0.6 load not run with both modes: no ratio line)")
        return
    x = at_06["static"]["p50"] / at_06["continuous"]["p50"]
    y = at_06["continuous"]["images_per_s"] / at_06["static"]["images_per_s"]
    if "inline" in at_06:  # what decoding on the finisher's thread adds to the engine
        print(f"p50_latency_ratio_inline_vs_continuous="
              f"{at_06['inline']['p50'] / at_06['continuous']['p50']:.2f} throughput_ratio="
              f"{at_06['continuous']['images_per_s'] / at_06['inline']['images_per_s']:.2f}")
    print(f"p50_latency_ratio_static_vs_continuous={x:.2f} throughput_ratio={y:.2f}")


if __name__ == "__main__":
    main()
