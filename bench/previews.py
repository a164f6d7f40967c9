"""The cost of previews: engine step time with and without them (Janus-Pro, small shape).

    python bench/previews.py --jobs 2 --device cpu --every 48 --max-steps 192

Builds the random-weight `small` model of bench/generate.py (real 576-token / 384 px image
path and VQ model, narrow LLM), runs --jobs jobs through the continuous engine to the end
(or --max-steps of it) twice: no previews, then every job with `preview` on and
`previews(every)` called after each step as the worker does. Prints the mean step time of
each, the mean time of one preview (one 384 px VQ decode, masking and a 128 px thumbnail)
and the JPEG size the worker sends.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import time

if __package__ in (None, ""):  # run as a script: make `service` and `bench` importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv: list[str] | None = None) -> None:
    import torch

    from bench.generate import PROMPTS, build
    from service.models.base import GenerateRequest
    from service.models.janus_pro.runner import JanusProRunner

    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--max-steps", type=int, default=192)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--every", type=int, default=48)
    args = parser.parse_args(argv)
    dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
    model, processor = build("small", args.device, dtype)
    runner = JanusProRunner("<random small>", args.device)
    runner.attach(model, processor)

    def run(preview: bool) -> tuple[float, float, int, int]:
        engine = runner.open_engine("generate", args.jobs)
        engine.admit([(i, GenerateRequest(PROMPTS[i], seed=i, preview=preview))
                      for i in range(args.jobs)])
        steps = shots = size = 0
        step_s = preview_s = 0.0
        while engine.active() and steps < args.max_steps:
            started = time.perf_counter()
            engine.step()
            step_s += time.perf_counter() - started
            steps += 1
            started = time.perf_counter()
            taken = engine.previews(args.every)
            preview_s += time.perf_counter() - started
            for image in taken.values():
                buffer = io.BytesIO()
                image.save(buffer, "JPEG", quality=70)
                size += buffer.tell()
            shots += len(taken)
        return step_s / steps, preview_s / steps, shots, size // max(1, shots)

    base, idle, _, _ = run(False)
    print(f"# without previews: {base * 1e3:.2f} ms per step", flush=True)
    with_steps, cost, shots, size = run(True)
    per_shot = cost * min(args.max_steps, runner.num_image_tokens) / max(1, shots)
    print(f"# janus-pro small, {args.jobs} jobs, device {args.device}, "
          f"{torch.get_num_threads()} threads, every {args.every} steps, "
          f"first {args.max_steps} steps, load average {os.getloadavg()[0]:.1f}")
    print(f"step_ms_without_previews={base * 1e3:.2f} previews_call_ms_none_asked={idle * 1e3:.3f}")
    print(f"step_ms_with_previews={(with_steps + cost) * 1e3:.2f} "
          f"(step {with_steps * 1e3:.2f} + previews {cost * 1e3:.2f} averaged over steps) "
          f"previews={shots} ms_per_preview={per_shot * 1e3:.1f} jpeg_bytes={size}")


if __name__ == "__main__":
    main()
