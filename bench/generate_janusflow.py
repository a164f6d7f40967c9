"""JanusFlow generation benchmark: random weights of the real architecture, no download.

For batch sizes 1, 2, 4, 8 (capped at --jobs) it runs that many one-image jobs as one
batch through the rectified-flow sampler and the SDXL-VAE decode, and prints seconds per
image for the LLM ODE steps and for the VAE decode; and, in the same run, the ODE with
the prompt's KV cache reused across steps (this service) against re-running the whole
prompt every step (what the published demo ends up doing), with their ratio.

Shapes: "1b" is JanusFlow-1.3B (Llama: hidden 2048, 24 layers, 16 heads; ConvNeXt
generation encoder/decoder at 768 channels; the SDXL VAE's shape); "small" is a scaled-down
model with the same 384 px geometry (48x48 latents, 576 image tokens), for CPUs.

    python -m bench.generate_janusflow --shape small --jobs 4 [--device cpu] [--steps 10]

`bench/generate.py --family janusflow` calls `run(args)`; `args` needs `.shape`, `.jobs` and
`.device`, and may carry `.steps`, `.prompt_tokens`, `.guidance`, `.repeats` and `.threads`.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `service` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from service.models.janusflow.attention import ATTN_IMPLEMENTATION  # noqa: E402
from service.models.janusflow.config import parse_config  # noqa: E402
from service.models.janusflow.load import build_model  # noqa: E402
from service.models.janusflow.sampler import FlowJob, FlowSampler, decode_latents  # noqa: E402

IMAGE_SIZE = 384
PUBLISHED_CONFIG = Path(__file__).resolve().parents[1] / "tests/data/janusflow-1.3b-config.json"
# stabilityai/sdxl-vae's config.json, less the fields that only name the class/version.
SDXL_VAE = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 4, "layers_per_block": 2,
    "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [128, 256, 512, 512], "norm_num_groups": 32, "act_fn": "silu",
    "sample_size": 1024, "scaling_factor": 0.13025,
}


def _config(shape: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(model config.json, VAE kwargs) for `shape`."""
    config = json.loads(PUBLISHED_CONFIG.read_text())
    if shape == "1b":
        return config, SDXL_VAE
    if shape != "small":
        raise ValueError(f"unknown shape {shape!r} (small or 1b)")
    config = copy.deepcopy(config)
    config["language_config"].update(
        hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=4, vocab_size=1024,
    )
    config["vision_und_enc_config"]["params"].update(width=64, layers=2, heads=2)
    for part in ("vision_gen_enc_config", "vision_gen_dec_config"):
        config[part]["params"].update(hidden_size=256, block_out_channels=[96])
    config["vision_gen_dec_config"]["params"]["in_channels"] = 96
    vae = {**SDXL_VAE, "block_out_channels": [32, 64, 64, 64], "layers_per_block": 1}
    return config, vae


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _jobs(count: int, steps: int, prompt_tokens: int, guidance: float, vocab: int) -> list[FlowJob]:
    g = torch.Generator().manual_seed(0)
    jobs = []
    for i in range(count):
        ids = [0] + torch.randint(2, vocab, (prompt_tokens - 1,), generator=g).tolist()
        jobs.append(FlowJob(ids, num_images=1, steps=steps, guidance=guidance, seed=i))
    return jobs


@torch.inference_mode()
def ode_latents(sampler: FlowSampler, jobs: list[FlowJob]) -> list[torch.Tensor]:
    """Each job's final latents: the engine's Euler steps over jobs that start together
    (`FlowEngine` without its VAE decode)."""
    for job in jobs:
        sampler.start(job)
    bos = sampler.bos_prefix() if any(j.unconditional for j in jobs) else None
    while active := [j for j in jobs if j.done < j.steps]:
        sampler.advance(active, bos)
    return [j.z for j in jobs]  # type: ignore[misc]


def run(args: Any) -> None:
    device = str(getattr(args, "device", "cpu"))
    shape = str(args.shape)
    steps = getattr(args, "steps", None) or (30 if shape == "1b" else 10)
    prompt_tokens = getattr(args, "prompt_tokens", None) or 64
    guidance = getattr(args, "guidance", None) or 2.0
    repeats = max(1, getattr(args, "repeats", None) or 1)
    if getattr(args, "threads", None):
        torch.set_num_threads(int(args.threads))
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32

    from diffusers import AutoencoderKL

    raw, vae_kwargs = _config(shape)
    config = parse_config(raw)
    torch.manual_seed(0)
    model = build_model(config, device, ATTN_IMPLEMENTATION).to(dtype).eval()
    with torch.device(device):
        vae = AutoencoderKL(**vae_kwargs).eval()
    if dtype != torch.float32:
        vae = vae.to(dtype)  # bfloat16 as the demo runs it (the SDXL VAE fails in float16)
    latent, grid = config.latent_grid(2 ** (len(vae_kwargs["block_out_channels"]) - 1))
    sampler = FlowSampler(model, latent=latent, grid=grid, bos_id=0, pad_id=1, device=device,
                          dtype=dtype)
    vocab = raw["language_config"]["vocab_size"]
    def ode(count: int, reuse: bool, n_steps: int = steps) -> tuple[float, list[Any]]:
        sampler.reuse_prefix_kv = reuse
        jobs = _jobs(count, n_steps, prompt_tokens, guidance, vocab)
        _sync(device)
        started = time.perf_counter()
        out = ode_latents(sampler, jobs)
        _sync(device)
        return time.perf_counter() - started, out

    ode(1, True, 1)  # warm-up: allocator, kernels, lazy initialisation
    ode(1, False, 1)
    decode_latents(vae, sampler.noise(_jobs(1, 1, 2, guidance, vocab)[0]))

    sizes = sorted({min(b, args.jobs) for b in (1, 2, 4, 8)})
    params = sum(p.numel() for p in model.parameters()) / 1e9
    print(
        f"JanusFlow generate: shape={shape} ({params:.2f}B params, "
        f"LLM {config.hidden_size}x{model.language_model.config.num_hidden_layers}) "
        f"device={device} dtype={str(dtype).removeprefix('torch.')} steps={steps} "
        f"guidance={guidance} prompt={prompt_tokens} tokens, {IMAGE_SIZE}px "
        f"({latent}x{latent} latents, {grid * grid} image tokens), best of {repeats}"
    )
    header = (
        "batch | s/img ODE (KV reuse) | s/img VAE | s/img total | "
        "s/img ODE (prompt re-run) | re-run/reuse"
    )
    print(header)
    print("-" * len(header))
    for b in sizes:
        reuse_s = vae_s = rerun_s = float("inf")
        for _ in range(repeats):  # interleaved, best of: the machine may be shared
            seconds, latents = ode(b, True)
            reuse_s = min(reuse_s, seconds)
            _sync(device)
            started = time.perf_counter()
            for z in latents:
                decode_latents(vae, z)
            _sync(device)
            vae_s = min(vae_s, time.perf_counter() - started)
            rerun_s = min(rerun_s, ode(b, False)[0])
        print(
            f"{b:5d} | {reuse_s / b:20.3f} | {vae_s / b:9.3f} | {(reuse_s + vae_s) / b:11.3f} | "
            f"{rerun_s / b:25.3f} | {rerun_s / reuse_s:12.2f}"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=["small", "1b"], default="small")
    parser.add_argument("--jobs", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=None, help="default: 30 (1b), 10 (small)")
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--guidance", type=float, default=2.0)
    parser.add_argument("--repeats", type=int, default=1, help="report the best of N runs")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    run(parser.parse_args(argv))


if __name__ == "__main__":
    main()
