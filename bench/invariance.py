"""What batch invariance costs: the same batches with and without per-row products.

For Janus-Pro (the image-token decode loop) and JanusFlow (the rectified-flow ODE), at the
"small" shapes of `bench/generate.py` / `bench/generate_janusflow.py` (random weights, 384 px
geometry), it runs batches of 1, 4 and 8 one-image jobs with the library's batched matrix
products and with `service.models.invariance` (one product per row), interleaved, best of
--repeats, and prints seconds per image, the cost, and whether job 0's output was the same
bits alone and inside the batch in each mode.

    python bench/invariance.py [--repeats 2] [--threads N] [--flow-steps 10]
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

SIZES = (1, 4, 8)


def _janus_pro() -> tuple[Any, Any]:
    """(set_mode(invariant), run(batch) -> (seconds, job 0's output bytes))."""
    from bench.generate import PROMPTS, build
    from service.models.janus_pro.runner import JanusProRunner

    model, processor = build("small", "cpu", torch.float32)
    runner = JanusProRunner("<random small>", "cpu", batch_invariant=False)
    runner.attach(model, processor)
    requests = [GenerateRequest(PROMPTS[i % len(PROMPTS)], seed=i) for i in range(max(SIZES))]
    jobs = [runner._image_job(i, r) for i, r in enumerate(requests)]

    def set_mode(invariant: bool) -> None:
        (make_batch_invariant if invariant else undo_batch_invariant)(model)
        runner.decoder.lm.linear = invariant_linear if invariant else F.linear

    def run(n: int) -> tuple[float, bytes]:
        started = time.perf_counter()
        with torch.inference_mode():
            tokens = runner.decoder.image_tokens(jobs[:n], NullControl())
        return time.perf_counter() - started, tokens[0].numpy().tobytes()

    return set_mode, run


def _janusflow(steps: int) -> tuple[Any, Any]:
    from bench.generate_janusflow import ATTN_IMPLEMENTATION, _config, _jobs
    from service.models.janusflow.config import parse_config
    from service.models.janusflow.load import build_model
    from service.models.janusflow.sampler import FlowSampler

    raw, vae = _config("small")
    config = parse_config(raw)
    torch.manual_seed(0)
    model = build_model(config, "cpu", ATTN_IMPLEMENTATION).eval()
    latent, grid = config.latent_grid(2 ** (len(vae["block_out_channels"]) - 1))
    sampler = FlowSampler(model, latent=latent, grid=grid, bos_id=0, pad_id=1, device="cpu",
                          dtype=torch.float32)
    vocab = raw["language_config"]["vocab_size"]

    def set_mode(invariant: bool) -> None:
        (make_batch_invariant if invariant else undo_batch_invariant)(model)

    def run(n: int) -> tuple[float, bytes]:
        jobs = _jobs(n, steps, 64, 2.0, vocab)
        started = time.perf_counter()
        out = sampler.run(jobs, NullControl())
        return time.perf_counter() - started, out[0].numpy().tobytes()

    return set_mode, run


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--flow-steps", type=int, default=10)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"# torch {torch.__version__}, {torch.get_num_threads()} threads, CPU, float32, "
          f"best of {args.repeats}")
    header = (
        "family | batch | s/img batched | s/img invariant | cost | "
        "same bits (batched / invariant)"
    )
    print(header)
    print("-" * len(header))
    costs = []
    for family, (set_mode, run) in (
        ("janus-pro", _janus_pro()),
        ("janusflow", _janusflow(args.flow_steps)),
    ):
        alone: dict[bool, bytes] = {}
        for invariant in (False, True):  # warm-up, and job 0 alone in each mode
            set_mode(invariant)
            alone[invariant] = run(1)[1]
        for n in SIZES:
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
