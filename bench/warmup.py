"""A worker's warm-up: a few engine steps per shape against whole jobs.

    python bench/warmup.py --shape small
    python bench/warmup.py --shape 1b          # Janus-Pro-1B's shapes: ~8 GiB in float32

Builds a random-weight Janus-Pro of `--shape` in memory (bench/generate.py's shapes),
then times, in this process and on the same weights, `JanusProRunner.warmup()` (a few
steps of each engine, one VQ decode) and the warm-up workers ran before (whole jobs: one
understanding job of 2 tokens, then two 576-token images run to completion and decoded).
The first call of each pays the process's one-time setup, so the warm-up runs first and
is then timed again. Last line: `warmup_seconds=<s> whole_jobs_seconds=<s>`.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

if __package__ in (None, ""):  # run as a script: make `service` and `bench` importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", choices=["small", "1b", "7b"], default="small")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)

    import torch
    from PIL import Image

    from bench.generate import _cpu_model, _load, build
    from service.models.base import GenerateRequest, UnderstandRequest
    from service.models.engine import run_batch
    from service.models.janus_pro.runner import JanusProRunner

    dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
    started = time.perf_counter()
    model, processor = build(args.shape, args.device, dtype)
    runner = JanusProRunner(f"<random {args.shape}>", args.device, compile=False)
    runner.attach(model, processor)
    print(f"# janus-pro {args.shape} on {args.device} ({dtype}), built in "
          f"{time.perf_counter() - started:.1f}s; host {_cpu_model()}, "
          f"{torch.get_num_threads()} threads, load average {_load()}")

    def timed(fn) -> float:  # type: ignore[no-untyped-def]
        began = time.perf_counter()
        fn()
        return time.perf_counter() - began

    def whole_jobs() -> None:
        run_batch(runner, "understand",
                  [UnderstandRequest(Image.new("RGB", (32, 32)), "hi", max_new_tokens=2)])
        run_batch(runner, "generate", [
            GenerateRequest("warm-up", seed=1),
            GenerateRequest("a longer warm-up prompt", seed=2, temperature=0.0),
        ])

    first = timed(runner.warmup)
    warm = timed(runner.warmup)
    whole = timed(whole_jobs)
    print("| warm-up | seconds |")
    print("|---|---|")
    print(f"| engine steps, first in the process | {first:.2f} |")
    print(f"| engine steps, again | {warm:.2f} |")
    print(f"| whole jobs (before) | {whole:.2f} |")
    print(f"warmup_seconds={first:.2f} whole_jobs_seconds={whole:.2f}")


if __name__ == "__main__":
    main()
