"""Does a job's output hold across thread counts? What the CPU libraries allow.

A job's bits do not depend on its batch mates in batch-invariant mode (bench/invariance.py,
tests/test_models_invariance.py). This checks the next condition the README lists as not
held: the thread count. For each family's tiny test checkpoint it runs four seeds (two
images each) in a fresh process at 1 and at 2 threads, under these configurations, and
prints how many seeds gave the same PNG bytes at both counts:

- `batched`: batched products (Janus-Pro's default);
- `invariant`: JANUS_BATCH_INVARIANT=on (one product per row; since session 8 also the
  kernels whose bits follow the thread count avoided, and JanusFlow's VAE per image);
- `+ per-image decode`: also the VQ/VAE decoder one image at a time;
- `+ no oneDNN`: also convolutions through im2col + BLAS instead of oneDNN;

each without and with `MKL_CBWR=AVX2,STRICT` (MKL's strict conditional numerical
reproducibility: gemm bits independent of the thread count, documented for Intel CPUs on
the AVX2 and AVX-512 branches). It prints the CNR branch MKL reports back, and with
`--decode-cost` the VQ decode's seconds at the `small` shape (384 px) with and without
oneDNN. Tiny shapes keep elementwise ops below ATen's parallel grain, so a `same` here is
necessary, not sufficient, at real shapes.

    python bench/threads.py [--decode-cost]
    python bench/threads.py --quick      # CI: Janus-Pro only, two configurations, no CNR
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `service` and `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from service.models.engine import run_batch  # noqa: E402

CONFIGS = ["batched", "invariant", "+ per-image decode", "+ no oneDNN"]
SEEDS = (7, 8, 9, 10)


def mkl_branch() -> str:
    """MKL's CNR setting as it reports it (mkl_cbwr_get(MKL_CBWR_ALL)), e.g. 0x10002."""
    import torch

    try:
        lib = ctypes.CDLL(str(Path(torch.__file__).parent / "lib" / "libtorch_cpu.so"))
        return hex(lib.mkl_serv_cbwr_get(ctypes.c_int(-1)))
    except (OSError, AttributeError):  # a torch build without MKL linked in
        return "no MKL"


def child(family: str, checkpoint: str, config: int) -> None:
    import torch

    from service.models.base import GenerateRequest
    from service.models.invariance import make_batch_invariant
    from service.models.runners import load_runner

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    runner: object = load_runner(checkpoint, batch_invariant=config >= 1)
    if config >= 2:  # the decoder's convolutions one image at a time
        make_batch_invariant(getattr(runner, "vae", None) or runner.model.model.vqmodel)
    if config >= 3:
        torch.backends.mkldnn.enabled = False
    extra = {"steps": 4} if family == "janusflow" else {}
    out = {}
    for seed in SEEDS:
        result = run_batch(runner, "generate",
                           [GenerateRequest("a red fox", num_images=2, seed=seed, **extra)])
        out[seed] = hashlib.sha256(b"".join(i.tobytes() for i in result[0].images)).hexdigest()
    print(json.dumps({"digests": out, "branch": mkl_branch()}))


def run_child(family: str, checkpoint: str, config: int, threads: int, cbwr: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "MKL_CBWR"}
    env.update(OMP_NUM_THREADS=str(threads), **({"MKL_CBWR": cbwr} if cbwr else {}))
    out = subprocess.run(
        [sys.executable, __file__, "--child", family, checkpoint, str(config)],
        env=env, capture_output=True, text=True, timeout=600, check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def decode_cost() -> None:
    import torch

    from bench.generate import build

    model, _ = build("small", "cpu", torch.float32)
    codes = torch.randint(0, 16384, (1, 576), generator=torch.Generator().manual_seed(0))
    for enabled in (True, False, True, False):
        torch.backends.mkldnn.enabled = enabled
        started = time.perf_counter()
        with torch.inference_mode():
            model.model.vqmodel.decode(codes)
        print(f"VQ decode, small shape, {torch.get_num_threads()} threads, oneDNN "
              f"{'on ' if enabled else 'off'}: {time.perf_counter() - started:.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--decode-cost", action="store_true")
    parser.add_argument("--quick", action="store_true", help="CI: that the script runs")
    args = parser.parse_args()
    if args.child:
        child(args.child[0], args.child[1], int(args.child[2]))
        return
    from bench.generate import _cpu_model, _load
    from service.models.checkpoints.tiny import write_tiny_checkpoint

    print(f"threads: cpu={_cpu_model()!r} cores={os.cpu_count()} load={_load()}")
    print(f"{'family':10} | {'configuration':20} | {'MKL_CBWR':12} | {'MKL reports':11} | "
          f"same at 1 and 2 threads")
    with tempfile.TemporaryDirectory() as tmp:
        for family in ("janus-pro",) if args.quick else ("janus-pro", "janusflow"):
            checkpoint = write_tiny_checkpoint(family, f"{tmp}/{family}", image_size=64)
            for config, name in enumerate(CONFIGS):
                if args.quick and config not in (0, len(CONFIGS) - 1):
                    continue
                for cbwr in ("",) if args.quick else ("", "AVX2,STRICT"):
                    one, two = (run_child(family, checkpoint, config, t, cbwr) for t in (1, 2))
                    same = sum(one["digests"][s] == two["digests"][s] for s in one["digests"])
                    print(f"{family:10} | {name:20} | {cbwr or '-':12} | {two['branch']:11} | "
                          f"{same}/{len(SEEDS)} seeds")
    if args.decode_cost:
        decode_cost()


if __name__ == "__main__":
    main()
