"""What batch invariance costs: the same batches with and without per-row products.

For Janus-Pro (the image-token decode loop) and JanusFlow (the rectified-flow ODE), at the
"small" shapes of `bench/generate.py` / `bench/generate_janusflow.py` (random weights, 384 px
geometry), it runs batches of 1, 4 and 8 one-image jobs in three modes, interleaved, best of
--repeats: `batched` (the library's batched products and SDPA), `rows` (one product per row,
`make_batch_invariant(threads=False)`: the mode as it was before it also covered thread
counts) and `invariant` (the mode as the runners set it: per row, and on a CPU attention
as explicit products, pointwise convolutions as Linears, activations in serial chunks).
It prints seconds per image, the costs against `batched`, and whether job 0's output was
the same bits alone and inside the batch in each mode.

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
from service.models.engine import run_to_completion  # noqa: E402
from service.models.invariance import (  # noqa: E402
    in_serial_chunks,
    invariant_attention,
    invariant_linear,
    make_batch_invariant,
    per_row,
    undo_batch_invariant,
)

MODES = ("batched", "rows", "invariant")


def _wrap(model: Any, mode: str) -> None:
    undo_batch_invariant(model)
    if mode != "batched":
        make_batch_invariant(model, threads=mode == "invariant")


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

    def set_mode(mode: str) -> None:
        _wrap(model, mode)
        runner.batch_invariant = mode != "batched"  # the engine's per-row attention
        lm = runner.lm
        lm.linear = F.linear if mode == "batched" else invariant_linear
        full = mode == "invariant" and device == "cpu"
        lm.attend = invariant_attention if full else F.scaled_dot_product_attention
        lm.act = {"batched": F.silu, "rows": per_row(F.silu),
                  "invariant": per_row(in_serial_chunks(F.silu))}[mode]

    def run(n: int) -> tuple[float, bytes]:
        _sync(device)
        started = time.perf_counter()
        engine = runner.open_engine("generate", n)
        engine._result = lambda live, _seconds: live.tokens  # the tokens, not the images
        tokens = run_to_completion(engine, requests[:n], NullControl())
        _sync(device)
        return time.perf_counter() - started, tokens[0].cpu().numpy().tobytes()

    return set_mode, run


def _janusflow(steps: int, device: str) -> tuple[Any, Any]:
    from bench.generate_janusflow import ATTN_IMPLEMENTATION, _config, _jobs, ode_latents
    from service.models.janusflow.attention import ATTN_INVARIANT
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

    def set_mode(mode: str) -> None:
        _wrap(model, mode)
        full = mode == "invariant" and device == "cpu"
        model.language_model.config._attn_implementation = ATTN_INVARIANT if full \
            else ATTN_IMPLEMENTATION

    def run(n: int) -> tuple[float, bytes]:
        jobs = _jobs(n, steps, 64, 2.0, vocab)
        _sync(device)
        started = time.perf_counter()
        out = ode_latents(sampler, jobs)
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
    header = ("family | batch | s/img batched | s/img rows | s/img invariant | cost rows | "
              "cost invariant | same bits (batched / rows / invariant)")
    print(header)
    print("-" * len(header))
    costs = []
    builders = {
        "janus-pro": lambda: _janus_pro(args.device),
        "janusflow": lambda: _janusflow(args.flow_steps, args.device),
    }
    for family in args.families.split(","):
        set_mode, run = builders[family]()
        alone: dict[str, bytes] = {}
        for mode in MODES:  # warm-up, and job 0 alone in each mode
            set_mode(mode)
            alone[mode] = run(1)[1]
        for n in sizes:
            best = dict.fromkeys(MODES, float("inf"))
            same = {}
            for _ in range(max(1, args.repeats)):
                for mode in MODES:
                    set_mode(mode)
                    seconds, out = run(n)
                    best[mode] = min(best[mode], seconds)
                    same[mode] = out == alone[mode]
            rows, full = (best[m] / best["batched"] - 1 for m in ("rows", "invariant"))
            costs.append(full)
            print(f"{family:9} | {n:5d} | {best['batched'] / n:13.3f} | {best['rows'] / n:10.3f} "
                  f"| {best['invariant'] / n:15.3f} | {rows:+9.0%} | {full:+14.0%} | "
                  + " / ".join("yes" if same[m] else "NO" for m in MODES))
    print(f"max_invariance_cost={max(costs):.3f}")


if __name__ == "__main__":
    main()
