"""JanusFlow's `config.json` (DeepSeek's `multi_modality` layout) read into plain specs.

The published file names each part by its reference class (`cls`) and constructor
arguments (`params`):

- `vision_und_enc_config`: `CLIPVisionTower` over a SigLIP ViT picked by `model_name`
  (`siglip_large_patch16_384`: width 1024, 24 blocks, 16 heads, 16 px patches, MLP x4);
- `vision_gen_enc_config` / `vision_gen_dec_config`: `ShallowUViTEncoder` /
  `ShallowUViTDecoder`, the ConvNeXt-style pair between the VAE latents and the LLM;
- `language_config`: a Llama (`LlamaConfig` keys).

The aligners have no config of their own: their widths follow from the parts they join
(SigLIP width -> LLM width, generation encoder width -> LLM width, LLM width -> generation
decoder width). Tiny test checkpoints use the same layout; because `model_name` fixes the
SigLIP shape, they may add `width`, `layers`, `heads`, `patch_size` and `mlp_ratio` to the
understanding encoder's `params` (an extension the published file does not use).

Nothing here imports torch; `language_config()` imports transformers when called.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from service.models.tokens import BOG, BOI, BOS, EOI, EOS, IMAGE, PAD

# SigLIP shapes by the names the reference's `create_siglip_vit` accepts.
SIGLIP_MODELS: dict[str, dict[str, Any]] = {
    "siglip_large_patch16_384": {
        "image_size": 384,
        "patch_size": 16,
        "width": 1024,
        "layers": 24,
        "heads": 16,
        "mlp_ratio": 4.0,
    },
    "siglip_large_patch16_256": {
        "image_size": 256,
        "patch_size": 16,
        "width": 1024,
        "layers": 24,
        "heads": 16,
        "mlp_ratio": 4.0,
    },
}

# DeepSeek's tokenizer special tokens as JanusFlow's processor uses them. Its prompts use
# plain `User`/`Assistant` roles (`prompts.JANUSFLOW_FORMAT`), so no role tokens here.
SPECIAL_TOKENS = [BOS, EOS, PAD, IMAGE, BOI, EOI, BOG]


class ConfigError(ValueError):
    """A config.json that does not describe a JanusFlow model this code can build."""


@dataclass(frozen=True)
class SiglipSpec:
    image_size: int
    patch_size: int
    width: int
    depth: int
    heads: int
    mlp_hidden: int
    pixel_mean: tuple[float, ...] | None = None  # CLIPVisionTower's optional image_norm
    pixel_std: tuple[float, ...] | None = None

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


@dataclass(frozen=True)
class GenEncoderSpec:
    input_channels: int
    channels: int
    kernel_size: int
    stride: int
    padding: int
    layers_in_middle: int
    hidden_size: int
    use_mid_block: bool
    norm_eps: float
    use_bias: bool


@dataclass(frozen=True)
class GenDecoderSpec:
    in_channels: int
    out_channels: int
    channels: int
    upsamples: int
    layers_in_middle: int
    hidden_size: int
    use_mid_block: bool
    norm_eps: float
    use_bias: bool


@dataclass(frozen=True)
class JanusFlowConfig:
    raw: dict[str, Any]
    und: SiglipSpec
    gen_enc: GenEncoderSpec
    gen_dec: GenDecoderSpec
    hidden_size: int  # the LLM's width

    def language_config(self):  # -> transformers.LlamaConfig
        from transformers import LlamaConfig

        return LlamaConfig(**self.raw["language_config"])

    @property
    def image_size(self) -> int:
        """Pixels per side of understanding inputs and of generated images (384 published)."""
        return self.und.image_size

    def latent_grid(self, vae_factor: int) -> tuple[int, int]:
        """(latent side, token grid side) for images of `image_size` px and a VAE that
        downsamples by `vae_factor` (SDXL: 8, so 384 px -> 48x48 latents -> 24x24 tokens)."""
        if self.image_size % vae_factor:
            raise ConfigError(f"image size {self.image_size} is not a multiple of {vae_factor}")
        latent = self.image_size // vae_factor
        enc = self.gen_enc
        grid = (latent + 2 * enc.padding - enc.kernel_size) // enc.stride + 1
        if grid < 1 or grid * 2**self.gen_dec.upsamples != latent:
            raise ConfigError(
                f"{latent}x{latent} latents give a {grid}x{grid} token grid that the decoder's "
                f"{self.gen_dec.upsamples} upsampling(s) do not map back to {latent}x{latent}"
            )
        return latent, grid


def _params(config: dict[str, Any], key: str, cls: str) -> dict[str, Any]:
    part = config.get(key)
    if not isinstance(part, dict):
        raise ConfigError(f"config.json has no {key}")
    if cls not in str(part.get("cls", "")):
        raise ConfigError(f"{key}.cls is {part.get('cls')!r}, expected {cls}")
    params = part.get("params", {})
    if not isinstance(params, dict):
        raise ConfigError(f"{key}.params is not an object")
    return params


def _siglip(params: dict[str, Any]) -> SiglipSpec:
    name = params.get("model_name", "siglip_large_patch16_384")
    if name not in SIGLIP_MODELS:
        raise ConfigError(f"unsupported understanding encoder {name!r}")
    shape = {**SIGLIP_MODELS[name], **params}
    layers, select = int(shape["layers"]), int(shape.get("select_layer", -1))
    # As the reference builds it: only the blocks up to the selected layer exist.
    depth = min(layers, layers + select + 1) if select <= 0 else min(layers, select)
    width = int(shape["width"])
    mean, std = params.get("pixel_mean"), params.get("pixel_std")
    return SiglipSpec(
        image_size=int(shape["image_size"]),
        patch_size=int(shape["patch_size"]),
        width=width,
        depth=depth,
        heads=int(shape["heads"]),
        mlp_hidden=int(width * float(shape["mlp_ratio"])),
        pixel_mean=tuple(mean) if mean is not None and std is not None else None,
        pixel_std=tuple(std) if mean is not None and std is not None else None,
    )


def _channels(params: dict[str, Any]) -> int:
    channels = list(params.get("block_out_channels", [768]))
    if not channels or any(c != channels[0] for c in channels):
        raise ConfigError(f"block_out_channels must be one width, got {channels}")
    return int(channels[0])


def parse_config(config: dict[str, Any]) -> JanusFlowConfig:
    if config.get("model_type") != "multi_modality":
        raise ConfigError(f"model_type is {config.get('model_type')!r}, not 'multi_modality'")
    language = config.get("language_config")
    if not isinstance(language, dict):
        raise ConfigError("config.json has no language_config")
    hidden = int(language.get("hidden_size", 4096))  # LlamaConfig's own default

    und = _siglip(_params(config, "vision_und_enc_config", "CLIPVisionTower"))
    enc = _params(config, "vision_gen_enc_config", "ShallowUViTEncoder")
    kernel, stride = int(enc.get("kernel_size", 7)), int(enc.get("stride", 4))
    padding = enc.get("padding")
    gen_enc = GenEncoderSpec(
        input_channels=int(enc.get("input_channels", 3)),
        channels=_channels(enc),
        kernel_size=kernel,
        stride=stride,
        padding=max(kernel - stride, 0) if padding is None else int(padding),
        layers_in_middle=int(enc.get("layers_in_middle", 2)),
        hidden_size=int(enc.get("hidden_size", 2048)),
        use_mid_block=bool(enc.get("use_mid_block", True)),
        norm_eps=float(enc.get("norm_eps", 1e-6)),
        use_bias=bool(enc.get("use_bias", True)),
    )
    dec = _params(config, "vision_gen_dec_config", "ShallowUViTDecoder")
    gen_dec = GenDecoderSpec(
        in_channels=int(dec.get("in_channels", 768)),
        out_channels=int(dec.get("out_channels", 3)),
        channels=_channels(dec),
        upsamples=int(dec.get("upsamples", 2)),
        layers_in_middle=int(dec.get("layers_in_middle", 2)),
        hidden_size=int(dec.get("hidden_size", 2048)),
        use_mid_block=bool(dec.get("use_mid_block", True)),
        norm_eps=float(dec.get("norm_eps", 1e-6)),
        use_bias=bool(dec.get("use_bias", True)),
    )
    # The time embedding enters the LLM as a token and conditions the decoder blocks.
    if gen_enc.hidden_size != hidden or gen_dec.hidden_size != hidden:
        raise ConfigError(
            f"generation encoder/decoder hidden_size ({gen_enc.hidden_size}/"
            f"{gen_dec.hidden_size}) must equal the LLM's hidden_size ({hidden})"
        )
    if gen_dec.in_channels != gen_enc.channels or gen_dec.channels != gen_enc.channels:
        raise ConfigError("the generation decoder's widths must match the encoder's")
    if gen_dec.out_channels != gen_enc.input_channels:
        raise ConfigError("the generation decoder must output as many channels as it reads")
    if und.image_size % und.patch_size:
        raise ConfigError(f"image_size {und.image_size} is not a multiple of the patch size")
    return JanusFlowConfig(
        raw=config, und=und, gen_enc=gen_enc, gen_dec=gen_dec, hidden_size=hidden
    )
