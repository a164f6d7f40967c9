"""Reading a JanusFlow checkpoint directory: config, weights (strict, by key), tokenizer,
image preprocessing settings and the SDXL VAE.

Weights are read with safetensors straight into a model built on the `meta` device, so a
1.3B checkpoint never exists twice in memory and no random initialisation is paid for.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

import torch

from service.models.janusflow.config import JanusFlowConfig, parse_config
from service.models.janusflow.modules import JanusFlowModel

WEIGHTS = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"
DEFAULT_VAE = "stabilityai/sdxl-vae"


class WeightsError(Exception):
    """Checkpoint weights that do not match the model the config describes."""


def resolve_dir(path: str) -> str:
    """A local directory for `path`: itself, or the hub cache's snapshot of a hub id."""
    if os.path.isdir(path):
        return path
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.safetensors", "*.txt", "*.model"]
    try:
        return snapshot_download(path, allow_patterns=patterns, local_files_only=True)
    except Exception:
        return snapshot_download(path, allow_patterns=patterns)


def read_config(directory: str) -> JanusFlowConfig:
    with open(os.path.join(directory, "config.json"), encoding="utf-8") as f:
        return parse_config(json.load(f))


def build_model(
    config: JanusFlowConfig,
    device: str | torch.device = "meta",
    attn_implementation: str | None = None,
) -> JanusFlowModel:
    with torch.device(device):
        return JanusFlowModel(config, attn_implementation=attn_implementation)


def weight_files(directory: str) -> list[str]:
    single = os.path.join(directory, WEIGHTS)
    if os.path.isfile(single):
        return [single]
    index = os.path.join(directory, WEIGHTS_INDEX)
    if os.path.isfile(index):
        with open(index, encoding="utf-8") as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
        return [os.path.join(directory, name) for name in shards]
    raise WeightsError(f"{directory}: no {WEIGHTS} and no {WEIGHTS_INDEX}")


def _sample(names: set[str], n: int = 5) -> str:
    items = sorted(names)
    return ", ".join(items[:n]) + (f" (+{len(items) - n} more)" if len(items) > n else "")


def load_weights(
    model: JanusFlowModel, files: list[str], dtype: torch.dtype, device: str | torch.device
) -> None:
    """Fill `model` (built on `meta`) from safetensors `files`; every key must match."""
    from safetensors import safe_open

    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    state: dict[str, torch.Tensor] = {}
    found: set[str] = set()
    for path in files:
        with safe_open(path, framework="pt", device="cpu") as f:
            found.update(f.keys())
    missing, unexpected = set(expected) - found, found - set(expected)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s): {_sample(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s): {_sample(unexpected)}")
        raise WeightsError("weights do not match config.json: " + "; ".join(parts))
    for path in files:
        with safe_open(path, framework="pt", device="cpu") as f:
            for key in f.keys():
                tensor = f.get_tensor(key)
                if tuple(tensor.shape) != expected[key]:
                    raise WeightsError(
                        f"{key}: checkpoint shape {tuple(tensor.shape)}, "
                        f"config.json gives {expected[key]}"
                    )
                state[key] = tensor.to(device=device, dtype=dtype)
    model.load_state_dict(state, strict=True, assign=True)
    # Non-persistent buffers are not in the checkpoint: rebuild the rotary table for real.
    llama = model.language_model.model
    llama.rotary_emb = type(llama.rotary_emb)(llama.config).to(device)  # float32 table
    meta = [name for name, b in model.named_buffers() if b.is_meta]
    if meta:
        raise WeightsError(f"buffers left uninitialised: {meta}")


def load_model(
    directory: str, dtype: torch.dtype, device: str, attn_implementation: str | None = None
) -> JanusFlowModel:
    model = build_model(read_config(directory), "meta", attn_implementation)
    load_weights(model, weight_files(directory), dtype, device)
    return model.eval()


@dataclass(frozen=True)
class ImageSettings:
    """What the reference's VLMImageProcessor does: fit the longest side to `image_size`
    (bicubic), pad to a square with `background`, rescale, and (if `normalize`) normalise."""

    image_size: int
    mean: tuple[float, float, float] | None = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    min_size: int = 14
    rescale_factor: float = 1 / 255
    normalize: bool = True

    @property
    def background(self) -> tuple[int, ...]:
        # As VLMImageProcessor.__init__: the mean in 8 bits, truncated (0.5 -> 127), or 127
        # grey without a mean. Its `background_color` config key is never read.
        if self.mean is None:
            return (127, 127, 127)
        return tuple(int(m * 255) for m in self.mean)


def read_image_settings(directory: str, image_size: int) -> ImageSettings:
    path = os.path.join(directory, "preprocessor_config.json")
    if not os.path.isfile(path):
        return ImageSettings(image_size)
    with open(path, encoding="utf-8") as f:
        raw: dict[str, Any] = json.load(f)
    default = ImageSettings(image_size)
    mean = raw.get("image_mean", default.mean)
    return ImageSettings(
        image_size=int(raw.get("image_size", image_size)),
        mean=None if mean is None else tuple(mean),  # type: ignore[arg-type]
        std=tuple(raw.get("image_std", default.std)),  # type: ignore[arg-type]
        min_size=int(raw.get("min_size", default.min_size)),
        rescale_factor=float(raw.get("rescale_factor", default.rescale_factor)),
        normalize=bool(raw.get("do_normalize", default.normalize)),
    )


def load_tokenizer(directory: str):  # -> tokenizers.Tokenizer
    from tokenizers import Tokenizer

    path = os.path.join(directory, "tokenizer.json")
    if not os.path.isfile(path):
        raise WeightsError(f"{directory}: no tokenizer.json")
    return Tokenizer.from_file(path)


def vae_source(checkpoint_dir: str, vae_path: str) -> str:
    """The checkpoint's own `vae/` (tiny checkpoints) wins over the configured VAE path."""
    own = os.path.join(checkpoint_dir, "vae")
    return own if os.path.isdir(own) else vae_path


def load_vae(source: str, dtype: torch.dtype, device: str):  # -> diffusers.AutoencoderKL
    from diffusers import AutoencoderKL

    if os.path.isdir(source):
        vae = AutoencoderKL.from_pretrained(source, torch_dtype=dtype)
    else:
        try:  # the hub cache first: a worker that has the VAE must not wait on the network
            vae = AutoencoderKL.from_pretrained(source, torch_dtype=dtype, local_files_only=True)
        except Exception:
            vae = AutoencoderKL.from_pretrained(source, torch_dtype=dtype)
    return vae.to(device).eval()


def vae_factor(vae: Any) -> int:
    return 2 ** (len(vae.config.block_out_channels) - 1)
