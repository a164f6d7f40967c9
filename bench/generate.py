"""Image-generation throughput: the continuous engine vs transformers' `generate`.

    python bench/generate.py --family janus-pro --shape small --jobs 8 --device cpu

Builds a random-weight Janus model of the given shape in memory (nothing is downloaded):
`small` keeps the real 576-token / 384 px image path and VQ model with a narrow, shallow LLM;
`1b` and `7b` use the published Janus-Pro sizes. For batch sizes 1, 2, 4, 8, 16 (up to
--jobs) it times the token loop of `JanusProRunner`'s image engine on that many jobs
admitted at once and stepped until the last leaves (prefill included, VQ decode not), then
the same --jobs jobs through transformers' `generate(generation_mode="image")` one after
another, and prints the ratio. VQ decoding is the same code in both paths and is timed
separately. On a GPU it also prints the weight-streaming floor (weights read per step / copy
bandwidth x 576). The last line is `speedup_batched_vs_transformers=<x>`: --jobs jobs as one
batch through the engine vs the same jobs through transformers one at a time.

`--compile` then times the engine's step eager and compiled (`LeanLM.compile`) in this
process on the same weights, alternating (eager, compiled, eager, compiled; the best of
each), at 1 job and at --jobs jobs, and prints `compiled_step_speedup=<x>` (eager ms/step /
compiled ms/step at --jobs jobs) as the last line.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from typing import Any

if __package__ in (None, ""):  # run as a script: make `service` and `bench` importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SHAPES: dict[str, dict[str, Any]] = {
    # hidden, layers, heads, intermediate; vision tower (hidden, layers, heads)
    "small": {"text": (256, 4, 4, 704), "vision": (256, 2, 4)},
    "1b": {"text": (2048, 24, 16, 5632), "vision": (1024, 24, 16)},  # Janus-Pro-1B
    "7b": {"text": (4096, 30, 32, 11008), "vision": (1024, 24, 16)},  # Janus-Pro-7B
}
PROMPTS = [
    "a red cat sitting on a chair",
    "a watercolor painting of mountains at sunset, with a lake and pine trees",
    "a dog",
    "a photo of a city street at night in the rain, cinematic lighting, high detail, 4k",
    "an astronaut riding a horse",
    "a bowl of fruit on a wooden table",
    "a lighthouse on a cliff above a stormy sea, dramatic clouds",
    "a cup of coffee",
]
GUIDANCE = [5.0, 3.0, 7.0, 5.0]


def build(shape: str, device: str, dtype: Any) -> tuple[Any, Any]:
    """A random-weight JanusForConditionalGeneration of `shape` and a processor for it."""
    import torch
    from transformers import (
        JanusConfig,
        JanusForConditionalGeneration,
        JanusProcessor,
        JanusVisionConfig,
        JanusVQVAEConfig,
        LlamaConfig,
    )

    from service.models.checkpoints import tiny

    with tempfile.TemporaryDirectory() as tmp:  # only for its tokenizer and image processor
        tiny.write_tiny_checkpoint("janus-pro", tmp, image_size=384)
        processor = JanusProcessor.from_pretrained(tmp)
    tok = processor.tokenizer
    hidden, layers, heads, inter = SHAPES[shape]["text"]
    v_hidden, v_layers, v_heads = SHAPES[shape]["vision"]
    text = LlamaConfig(
        vocab_size=102400,
        hidden_size=hidden,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=16384,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    vision = JanusVisionConfig(
        hidden_size=v_hidden,
        num_hidden_layers=v_layers,
        num_attention_heads=v_heads,
        image_size=384,
        projection_dim=hidden,
    )
    vq = JanusVQVAEConfig(
        num_embeddings=16384, embed_dim=8, projection_dim=hidden, image_token_embed_dim=hidden
    )
    config = JanusConfig(
        text_config=text,
        vision_config=vision,
        vq_config=vq,
        image_token_id=tok.convert_tokens_to_ids(tiny.IMAGE),
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    with torch.device(device):
        model = JanusForConditionalGeneration._from_config(config, dtype=dtype).eval()
    gen = model.generation_config
    gen.bos_token_id, gen.eos_token_id, gen.pad_token_id = (
        tok.bos_token_id,
        tok.eos_token_id,
        tok.pad_token_id,
    )
    gen.generation_kwargs = {"boi_token_id": tok.convert_tokens_to_ids(tiny.BOI)}
    return model, processor


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _load() -> str:
    # The benchmark machine may be shared: the load average says how much.
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _copy_bandwidth(device: str) -> float:
    """Bytes per second moved by a large device-to-device copy (read + write)."""
    import torch

    src = torch.empty(256 * 2**20, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    _sync(device)
    started = time.perf_counter()
    for _ in range(10):
        dst.copy_(src)
    _sync(device)
    return 2 * src.numel() * 10 / (time.perf_counter() - started)


def _step_weight_bytes(model: Any) -> int:
    """Bytes of the weights every image decode step reads (LLM layers, gen head/aligner)."""
    m = model.model
    parts = [
        m.language_model.layers,
        m.language_model.norm,
        m.generation_head,
        m.generation_aligner,
    ]
    return sum(p.numel() * p.element_size() for part in parts for p in part.parameters())


def run_janus_pro(args: argparse.Namespace) -> None:
    import torch

    from service.models.base import GenerateRequest
    from service.models.janus_pro.runner import JanusProRunner

    device = args.device
    cuda = device.startswith("cuda")
    dtype = torch.bfloat16 if cuda else torch.float32
    built = time.perf_counter()
    model, processor = build(args.shape, device, dtype)
    runner = JanusProRunner(f"<random {args.shape}>", device, compile=False)
    runner.attach(model, processor)
    steps = runner.num_image_tokens
    params = sum(p.numel() for p in model.model.language_model.layers.parameters())
    requests = [
        GenerateRequest(
            PROMPTS[i % len(PROMPTS)], seed=i, guidance=GUIDANCE[i % len(GUIDANCE)], temperature=1.0
        )
        for i in range(args.jobs)
    ]
    jobs = [runner.image_job(r) for r in requests]
    print(
        f"# janus-pro {args.shape}: LLM layers {params / 1e6:.1f}M params, {steps} image "
        f"tokens, device {device} ({dtype}), "
        f"built in {time.perf_counter() - built:.1f}s"
    )
    print(
        f"# host: {_cpu_model()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, load average {_load()}"
    )

    def tokens_of(batch: list[Any]) -> list[Any]:
        """The batch run to completion on the engine; each row leaves undecoded."""
        engine = runner.open_engine("generate", len(batch))
        engine.defer = True
        assert not engine.admit(list(enumerate(batch)))
        finished = []
        while engine.active():
            finished += engine.step()
        return [row for _, row in sorted(finished, key=lambda kv: kv[0])]

    def ours(batch: list[Any]) -> float:
        _sync(device)
        started = time.perf_counter()
        tokens_of(batch)
        _sync(device)
        return time.perf_counter() - started

    ours(requests[:2])  # warm-up: allocator, kernels, and the compiled graph if any
    sizes = [b for b in (1, 2, 4, 8, 16, 32, 64) if b <= args.jobs]
    if args.jobs not in sizes:
        sizes.append(args.jobs)
    timings, peaks = {}, {}
    for b in sizes:
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
        timings[b] = ours(requests[:b])
        peaks[b] = torch.cuda.max_memory_allocated(device) / 2**30 if cuda else None

    [undecoded] = tokens_of(requests[:1])
    _sync(device)
    started = time.perf_counter()
    undecoded.finish()  # the VQ decoder and the PNG-ready RGB image of one image
    _sync(device)
    vq_seconds = time.perf_counter() - started

    def theirs(job: Any) -> float:
        kwargs = {"do_sample": job.temperature > 0, "top_k": 0, "guidance_scale": job.guidance}
        if job.temperature > 0:
            kwargs["temperature"] = job.temperature
        ids = job.cond_ids[None].to(device)
        _sync(device)
        started = time.perf_counter()
        torch.manual_seed(job.seed)
        model.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), generation_mode="image", **kwargs
        )
        _sync(device)
        return time.perf_counter() - started

    theirs(jobs[0])  # warm-up
    # Each transformers job runs alone, so a few give its per-job time; --jobs of them at
    # the 7b shape would take most of a GPU lease.
    reference = [theirs(job) for job in jobs[: args.reference_jobs or len(jobs)]]
    ref_per_job = sum(reference) / len(reference)

    floor = None
    if cuda:
        bandwidth = _copy_bandwidth(device)
        weight_bytes = _step_weight_bytes(model)
        floor = weight_bytes / bandwidth * steps
        print(
            f"# weights read per step {weight_bytes / 2**30:.2f} GiB, copy bandwidth "
            f"{bandwidth / 1e9:.0f} GB/s -> floor {floor:.2f} s per batch of {steps} steps"
        )
    print(
        f"# VQ decode (same code both ways, not in the timings below): {vq_seconds:.3f} s per image"
    )
    print()
    header = "| jobs | s/job | images/s | ms/step | transformers s/job | ratio |"
    if floor is not None:
        header += " measured/floor | peak GiB |"
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for b in sizes:
        t = timings[b]
        row = (
            f"| {b} | {t / b:.3f} | {b / t:.2f} | {t / steps * 1000:.1f} | "
            f"{ref_per_job:.3f} | {ref_per_job / (t / b):.1f} |"
        )
        if floor is not None:
            row += f" {t / floor:.2f} | {peaks[b]:.1f} |"
        print(row)
    print()
    print(
        f"# transformers one job at a time: {ref_per_job / steps * 1000:.1f} ms/step, "
        f"{sum(reference):.2f} s for {len(reference)} jobs"
    )
    print(f"# load average at the end: {_load()}")
    # --jobs jobs through transformers, one after another (its per-job time x --jobs).
    print(f"speedup_batched_vs_transformers={ref_per_job * args.jobs / timings[args.jobs]:.2f}")
    if args.compile:
        compare_compiled(runner, requests, device)


def step_ms(runner: Any, requests: list[Any], device: str, steps: int = 64) -> float:
    """Mean ms of one engine step with these jobs running (after 8 warm steps)."""
    engine = runner.open_engine("generate", len(requests))
    engine.defer = True
    assert not engine.admit(list(enumerate(requests)))
    for _ in range(8):
        engine.step()
    _sync(device)
    started = time.perf_counter()
    for _ in range(steps):
        engine.step()
    _sync(device)
    return (time.perf_counter() - started) / steps * 1000


def compare_compiled(runner: Any, requests: list[Any], device: str) -> None:
    lm = runner.lm

    def state() -> tuple:
        return lm.pieces, lm.compiled, runner.image_scores, runner.text_head

    def use(saved: tuple) -> None:
        lm.pieces, lm.compiled, runner.image_scores, runner.text_head = saved

    eager = state()
    started = time.perf_counter()
    runner.compile_step()
    compiled = state()
    for n in sorted({1, len(requests)}):  # every length bucket and both row-count graphs
        engine = runner.open_engine("generate", n)
        engine.defer = True
        assert not engine.admit(list(enumerate(requests[:n])))
        while engine.active():
            engine.step()
    print(f"\n# compile + warm-up (the whole token loop at 1 and {len(requests)} jobs): "
          f"{time.perf_counter() - started:.1f} s")

    best: dict[tuple[int, str], float] = {}
    for _ in range(2):
        for mode, saved in (("eager", eager), ("compiled", compiled)):
            use(saved)
            for n in sorted({1, len(requests)}):
                ms = step_ms(runner, requests[:n], device)
                best[n, mode] = min(best.get((n, mode), ms), ms)
    use(compiled)
    print("| jobs | eager ms/step | compiled ms/step | speedup |")
    print("|---|---|---|---|")
    for n in sorted({1, len(requests)}):
        e, c = best[n, "eager"], best[n, "compiled"]
        print(f"| {n} | {e:.2f} | {c:.2f} | {e / c:.2f} |")
    n = len(requests)
    print(f"compiled_step_speedup={best[n, 'eager'] / best[n, 'compiled']:.2f}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--family", choices=["janus-pro", "janusflow"], default="janus-pro")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="small")
    parser.add_argument("--jobs", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--compile", action="store_true",
        help="also time the engine step compiled against eager (compiled_step_speedup)",
    )
    parser.add_argument(
        "--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)"
    )
    parser.add_argument(
        "--steps", type=int, default=None, help="JanusFlow ODE steps (default 30 at 1b, 10 small)"
    )
    parser.add_argument(
        "--reference-jobs", type=int, default=0,
        help="jobs timed through transformers' generate (default: all --jobs)",
    )
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error("--jobs must be at least 1")
    if args.family == "janusflow":
        try:
            from bench import generate_janusflow
        except ModuleNotFoundError as e:
            if e.name not in ("bench.generate_janusflow", "bench"):
                raise
            sys.exit("--family janusflow needs bench/generate_janusflow.py, which is missing")
        generate_janusflow.run(args)
        return
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    run_janus_pro(args)


if __name__ == "__main__":
    main()
