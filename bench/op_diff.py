"""Where does a job's arithmetic first differ between two thread counts? Op by op.

Runs one two-image generation job in batch-invariant mode (the runner as a worker builds
it) in a fresh process per thread count, records a digest of every floating-point result
of every ATen op (a TorchDispatchMode; views, in-place aliases and uninitialised buffers
left out), and prints the first op whose result differs, or that all agree. `--shape
small` is bench/serve.py's: the real 384 px decoders (VQ or VAE) with small language
models; `tiny` the test checkpoints'.

    python bench/op_diff.py --family janusflow --shape small --threads 1,4
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `service` and `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from service.models.engine import run_batch  # noqa: E402


def trace(family: str, shape: str, seed: int) -> list[list[Any]]:
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_leaves

    import service.models.runners as runners
    from bench.serve import make_runner
    from service.models.base import GenerateRequest

    load = runners.load_runner
    runners.load_runner = lambda path, **kw: load(path, **{**kw, "batch_invariant": "on"})
    runner = make_runner(family, shape, "cpu", tempfile.mkdtemp())
    log: list[list[Any]] = []

    class Digests(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
            out = func(*args, **(kwargs or {}))
            first = out[0] if isinstance(out, tuple | list) and out else out
            if not isinstance(first, torch.Tensor) or "empty" in str(func):
                return out
            inputs = {a.untyped_storage().data_ptr() for a in tree_leaves((args, kwargs))
                      if isinstance(a, torch.Tensor)}
            aliased = first.untyped_storage().data_ptr() in inputs
            if first.is_floating_point() and first.numel() and not aliased:
                data = first.detach().contiguous().numpy().tobytes()
                log.append([str(func), list(first.shape), hashlib.sha1(data).hexdigest()[:12]])
            return out

    extra = {"steps": 4} if family == "janusflow" else {}
    with Digests():
        run_batch(runner, "generate",
                  [GenerateRequest("a red fox", num_images=2, seed=seed, **extra)])
    return log


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", choices=["janus-pro", "janusflow"], default="janusflow")
    parser.add_argument("--shape", choices=["tiny", "small"], default="small")
    parser.add_argument("--threads", default="1,2", help="two thread counts")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        import torch

        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
        print(json.dumps(trace(args.family, args.shape, args.seed)))
        return
    a, b = (int(t) for t in args.threads.split(","))
    logs = []
    for threads in (a, b):
        out = subprocess.run(
            [sys.executable, __file__, "--child", "--family", args.family, "--shape",
             args.shape, "--seed", str(args.seed)],
            env={**os.environ, "OMP_NUM_THREADS": str(threads)}, capture_output=True,
            text=True, check=True)
        logs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    one, two = logs
    differ = [i for i, (x, y) in enumerate(zip(one, two, strict=False)) if x != y]
    head = f"op_diff: {args.family} {args.shape} seed {args.seed}, {a} vs {b} threads:"
    if len(one) != len(two):
        print(f"{head} {len(one)} against {len(two)} op results: the code paths differ")
        return
    if not differ:
        print(f"{head} all {len(one)} op results identical")
        return
    first = one[differ[0]]
    print(f"{head} {len(differ)} of {len(one)} op results differ; the first is op "
          f"{differ[0]}, {first[0]} -> {first[1]}")


if __name__ == "__main__":
    main()
