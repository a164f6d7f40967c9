"""What batch invariance costs: the same batches with and without per-row products.

For Janus-Pro (the image-token decode loop) and JanusFlow (the rectified-flow ODE), at the
"small" shapes of `bench/generate.py` / `bench/generate_janusflow.py` (random weights, 384 px
geometry), it runs batches of 1, 4 and 8 one-image jobs with the library's batched matrix
products and with `service.models.invariance` (one product per row), interleaved, best of
--repeats, and prints seconds per image, the cost, and whether job 0's output was the same
bits alone and inside the batch in each mode.

    python bench/invariance.py [--repeats 2] [--threads N] [--flow-steps 10] [--device cuda]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `service` and `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from service.models.base import GenerateRequest, NullControl  # noqa: E402
from service.models.invariance import (  # noqa: E402
    invariant_linear,
    make_batch_invariant,
    undo_batch_invariant,
)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _dtype(device: str) -> torch.dtype:
    return torch.bfloat16 if device.startswith("cuda") else torch.float32


def _janus_pro(device: str) -> tuple[Any, Any]:
    """(set_mode(invariant), run(batch) -> (seconds, job 0's output bytes))."""
    from bench.generate import PROMPTS, build
    from service.models.janus_pro.runner import JanusProRunner

    model, processor = build("small", device, _dtype(device))
    runner = JanusProRunner("<random small>", device, batch_invariant=False)
    runner.attach(model, processor)
    requests = [GenerateRequest(PROMPTS[i % len(PROMPTS)], seed=i) for i in range(64)]
    jobs = [runner._image_job(i, r) for i, r in enumerate(requests)]

    def set_mode(invariant: bool) -> None:
        (make_batch_invariant if invariant else undo_batch_invariant)(model)
        runner.decoder.lm.linear = invariant_linear if invariant else F.linear

    def run(n: int) -> tuple[float, bytes]:
        _sync(device)
        started = time.perf_counter()
        with torch.inference_mode():
            tokens = runner.decoder.image_tokens(jobs[:n], NullControl())
        _sync(device)
        return time.perf_counter() - started, tokens[0].cpu().numpy().tobytes()

    return set_mode, run


def _janusflow(steps: int, device: str) -> tuple[Any, Any]:
    from bench.generate_janusflow import ATTN_IMPLEMENTATION, _config, _jobs
    from service.models.janusflow.config import parse_config
    from service.models.janusflow.load import build_model
    from service.models.janusflow.sampler import FlowSampler

    raw, vae = _config("small")
    config = parse_config(raw)
    torch.manual_seed(0)
    model = build_model(config, device, ATTN_IMPLEMENTATION).to(_dtype(device)).eval()
    latent, grid = config.latent_grid(2 ** (len(vae["block_out_channels"]) - 1))
    sampler = FlowSampler(model, latent=latent, grid=grid, bos_id=0, pad_id=1, device=device,
                          dtype=_dtype(device))
    vocab = raw["language_config"]["vocab_size"]

    def set_mode(invariant: bool) -> None:
        (make_batch_invariant if invariant else undo_batch_invariant)(model)

    def run(n: int) -> tuple[float, bytes]:
        jobs = _jobs(n, steps, 64, 2.0, vocab)
        _sync(device)
        started = time.perf_counter()
        out = sampler.run(jobs, NullControl())
        _sync(device)
        return time.perf_counter() - started, out[0].cpu().numpy().tobytes()

    return set_mode, run


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--flow-steps", type=int, default=10)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sizes", default="1,4,8", help="batch sizes, comma-separated")
    parser.add_argument("--families", default="janus-pro,janusflow")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = [int(n) for n in args.sizes.split(",")]
    print(f"# torch {torch.__version__}, {torch.get_num_threads()} threads, {args.device}, "
          f"{str(_dtype(args.device)).removeprefix('torch.')}, best of {args.repeats}")
    header = (
        "family | batch | s/img batched | s/img invariant | cost | "
        "same bits (batched / invariant)"
    )
    print(header)
    print("-" * len(header))
    costs = []
    builders = {
        "janus-pro": lambda: _janus_pro(args.device),
        "janusflow": lambda: _janusflow(args.flow_steps, args.device),
    }
    for family in args.families.split(","):
        set_mode, run = builders[family]()
        alone: dict[bool, bytes] = {}
        for invariant in (False, True):  # warm-up, and job 0 alone in each mode
            set_mode(invariant)
            alone[invariant] = run(1)[1]
        for n in sizes:
            best = {False: float("inf"), True: float("inf")}
            same = {}
            for _ in range(max(1, args.repeats)):
                for invariant in (False, True):
                    set_mode(invariant)
                    seconds, out = run(n)
                    best[invariant] = min(best[invariant], seconds)
                    same[invariant] = out == alone[invariant]
            cost = best[True] / best[False] - 1
            costs.append(cost)
            print(f"{family:9} | {n:5d} | {best[False] / n:13.3f} | {best[True] / n:15.3f} | "
                  f"{cost:+5.0%} | {'yes' if same[False] else 'NO'} / "
                  f"{'yes' if same[True] else 'NO'}")
    print(f"max_invariance_cost={max(costs):.3f}")


if __name__ == "__main__":
    main()
