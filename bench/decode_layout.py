"""The VQ decode in NCHW against channels-last weights (service/models/janus_pro/layout.py).

Builds the `small` shape of bench/generate.py (the real 384 px VQ decoder, random weights),
makes a second copy of its VQ model with channels-last weights, and decodes the same random
codes through both, alternating, `--rounds` times per batch size. Prints seconds per image
(best and median), the speed-up, and how many values of the 8-bit images (the runner's own
conversion) differ between the layouts. Run it at several thread counts with
OMP_NUM_THREADS; one process runs both layouts, so the comparison shares the machine's state.

    python bench/decode_layout.py [--rounds 3] [--batches 1,4]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `service` and `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch

from bench.generate import _cpu_model, _load, build
from service.models.janus_pro.layout import use_channels_last
from service.models.janus_pro.runner import to_pil


def decode(vqmodel, codes: torch.Tensor) -> tuple[float, np.ndarray]:
    started = time.perf_counter()
    with torch.inference_mode():
        pixels = vqmodel.decode(codes).permute(0, 2, 3, 1)
        images = np.stack([np.asarray(im) for im in to_pil(pixels)])
    return time.perf_counter() - started, images


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batches", default="1,4")
    args = parser.parse_args(argv)
    model, _ = build("small", "cpu", torch.float32)
    nchw = model.model.vqmodel.eval()
    nhwc = copy.deepcopy(nchw)
    use_channels_last(nhwc)
    vocab = nchw.quantize.embedding.weight.shape[0]
    print(f"decode_layout: VQ decoder 384 px, cpu={_cpu_model()!r} "
          f"threads={torch.get_num_threads()} rounds={args.rounds} load={_load()}", flush=True)
    print("images | NCHW s/image (best, median) | channels-last s/image (best, median) "
          "| speed-up (median) | 8-bit values that differ (most levels apart)")
    generator = torch.Generator().manual_seed(0)
    for batch in (int(b) for b in args.batches.split(",")):
        codes = torch.randint(0, vocab, (batch, 576), generator=generator)
        decode(nchw, codes[:1])  # first-call allocations out of the timings
        decode(nhwc, codes[:1])
        times: dict[str, list[float]] = {"nchw": [], "nhwc": []}
        differ, levels = 0, 0
        for _ in range(args.rounds):
            a, pa = decode(nchw, codes)
            b, pb = decode(nhwc, codes)
            times["nchw"].append(a / batch)
            times["nhwc"].append(b / batch)
            gap = np.abs(pa.astype(np.int16) - pb.astype(np.int16))
            differ, levels = max(differ, int((gap > 0).sum())), max(levels, int(gap.max()))
        med = {k: statistics.median(v) for k, v in times.items()}
        print(f"{batch:6d} | {min(times['nchw']):10.3f}, {med['nchw']:6.3f} "
              f"         | {min(times['nhwc']):13.3f}, {med['nhwc']:6.3f} "
              f"                | {med['nchw'] / med['nhwc']:17.2f} "
              f"| {differ} of {pa.size} ({levels})",
              flush=True)
    print(f"load after: {_load()}")


if __name__ == "__main__":
    main()
