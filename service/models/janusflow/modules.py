"""JanusFlow's networks, with the module and parameter names of the published checkpoint.

- `SiglipViT`: a pre-norm ViT laid out like timm's `VisionTransformer` (what the reference
  wraps), so its keys are timm's: `patch_embed.proj`, `pos_embed`, `blocks.N.{norm1,
  attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}`, `norm`, and the `attn_pool` head that
  SigLIP's "map" pooling creates. timm itself is not used: it needs torchvision, whose
  wheels pin one torch build; the ViT is 60 lines.
- `ShallowUViTEncoder` / `ShallowUViTDecoder`: ConvNeXt blocks (depthwise 7x7 conv,
  RMSNorm, MLP x4 with GELU and global response norm) conditioned FiLM-style on the time
  embedding; the encoder patchifies latents with a strided conv, the decoder
  unpatchifies with a 1x1 conv and a pixel shuffle.
- `JanusFlowModel`: the parts under their published attribute names, and the Llama.

The timestep embedding is diffusers' (`Timesteps`, `TimestepEmbedding`), as in the
reference; RMSNorm is transformers' `LlamaRMSNorm`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from torch import nn
from transformers import LlamaForCausalLM
from transformers.models.llama.modeling_llama import LlamaRMSNorm

from service.models.janusflow.config import (
    GenDecoderSpec,
    GenEncoderSpec,
    JanusFlowConfig,
    SiglipSpec,
)

# -- understanding encoder: SigLIP ViT ---------------------------------------------------


class _PatchEmbed(nn.Module):
    def __init__(self, spec: SiglipSpec) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, spec.width, spec.patch_size, stride=spec.patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, patches, width)


class _Mlp(nn.Module):
    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.act = nn.GELU()  # a module, so that batch-invariant mode can run it per row
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class _SelfAttention(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class _Block(nn.Module):
    def __init__(self, spec: SiglipSpec) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(spec.width, eps=1e-6)
        self.attn = _SelfAttention(spec.width, spec.heads)
        self.norm2 = nn.LayerNorm(spec.width, eps=1e-6)
        self.mlp = _Mlp(spec.width, spec.mlp_hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class _AttentionPoolHead(nn.Module):
    """SigLIP's attention-pooling head. The checkpoint carries it but the reference never
    runs it (`ignore_head`): features are the normed patch tokens. Parameters only."""

    def __init__(self, spec: SiglipSpec) -> None:
        super().__init__()
        self.latent = nn.Parameter(torch.zeros(1, 1, spec.width))
        self.q = nn.Linear(spec.width, spec.width)
        self.kv = nn.Linear(spec.width, 2 * spec.width)
        self.proj = nn.Linear(spec.width, spec.width)
        self.norm = nn.LayerNorm(spec.width, eps=1e-6)
        self.mlp = _Mlp(spec.width, spec.mlp_hidden)


class SiglipViT(nn.Module):
    def __init__(self, spec: SiglipSpec) -> None:
        super().__init__()
        self.patch_embed = _PatchEmbed(spec)
        self.pos_embed = nn.Parameter(torch.zeros(1, spec.num_patches, spec.width))
        self.blocks = nn.ModuleList(_Block(spec) for _ in range(spec.depth))
        self.norm = nn.LayerNorm(spec.width, eps=1e-6)
        self.attn_pool = _AttentionPoolHead(spec)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(pixels) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.norm(x)


class SiglipTower(nn.Module):
    """The reference's `CLIPVisionTower`: the ViT under `vision_tower`, optional pixel norm."""

    def __init__(self, spec: SiglipSpec) -> None:
        super().__init__()
        self.spec = spec
        self.vision_tower = SiglipViT(spec)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        if self.spec.pixel_mean is not None and self.spec.pixel_std is not None:
            mean = pixels.new_tensor(self.spec.pixel_mean).view(1, -1, 1, 1)
            std = pixels.new_tensor(self.spec.pixel_std).view(1, -1, 1, 1)
            pixels = (pixels - mean) / std
        return self.vision_tower(pixels)


# -- generation encoder / decoder ---------------------------------------------------------


def _norm_channels(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Apply a last-dim norm over the channels of an NCHW tensor."""
    return norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class GlobalResponseNorm(nn.Module):
    """ConvNeXt-V2's GRN on NHWC input: scale each channel by its spatial L2 norm relative
    to the mean over channels, as a learned residual."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1, 1, 1, dim))
        self.bias = nn.Parameter(torch.zeros(1, 1, 1, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spatial = x.norm(p=2, dim=(1, 2), keepdim=True)
        relative = spatial / (spatial.mean(dim=-1, keepdim=True) + 1e-6)
        return x * (1 + self.weight * relative) + self.bias


class ConvNextBlock(nn.Module):
    def __init__(self, channels: int, hidden_size: int, eps: float, bias: bool) -> None:
        super().__init__()
        wide = 4 * channels
        self.depthwise = nn.Conv2d(channels, channels, 7, padding=3, groups=channels, bias=bias)
        self.norm = LlamaRMSNorm(channels, eps)
        self.channelwise_linear_1 = nn.Linear(channels, wide, bias=bias)
        self.channelwise_norm = GlobalResponseNorm(wide)
        self.channelwise_linear_2 = nn.Linear(wide, channels, bias=bias)
        self.cond_embeds_mapper = nn.Linear(hidden_size, 2 * channels, bias=bias)
        # Modules, not F.gelu/F.silu calls, so that batch-invariant mode can run them per row.
        self.act, self.cond_act = nn.GELU(), nn.SiLU()

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        h = self.depthwise(x).permute(0, 2, 3, 1)
        h = self.channelwise_linear_1(self.norm(h))
        h = self.channelwise_linear_2(self.channelwise_norm(self.act(h)))
        x = x + h.permute(0, 3, 1, 2)
        scale, shift = self.cond_embeds_mapper(self.cond_act(cond)).chunk(2, dim=1)
        return x * (1 + scale[:, :, None, None]) + shift[:, :, None, None]


class ConvNextStack(nn.Module):
    """The reference's `UVitBlock` with neither down- nor upsampling: just its ConvNeXt blocks."""

    def __init__(self, channels: int, depth: int, hidden_size: int, eps: float, bias: bool):
        super().__init__()
        self.res_blocks = nn.ModuleList(
            ConvNextBlock(channels, hidden_size, eps, bias) for _ in range(depth)
        )

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        for block in self.res_blocks:
            x = block(x, cond)
        return x


class Unpatchify(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, eps: float, bias: bool) -> None:
        super().__init__()
        self.norm = LlamaRMSNorm(in_channels, eps)
        self.unpatch_conv = nn.Conv2d(in_channels, out_channels * 4, 1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pixel_shuffle(self.unpatch_conv(_norm_channels(self.norm, x)), 2)


class ShallowUViTEncoder(nn.Module):
    """Latents (B, C, h, w) and times (B,) -> token map (B, D, h/s, w/s) and time embedding."""

    def __init__(self, spec: GenEncoderSpec) -> None:
        super().__init__()
        self.time_proj = Timesteps(spec.channels, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embed = TimestepEmbedding(
            spec.channels, spec.hidden_size, sample_proj_bias=spec.use_bias
        )
        self.in_conv = nn.Conv2d(
            spec.input_channels, spec.channels, spec.kernel_size, spec.stride, spec.padding
        )
        self.mid_block = (
            ConvNextStack(
                spec.channels, spec.layers_in_middle, spec.hidden_size, spec.norm_eps,
                spec.use_bias,
            )
            if spec.use_mid_block
            else None
        )

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t_emb = self.time_embed(self.time_proj(t.flatten()).to(x.dtype))
        h = self.in_conv(x)
        if self.mid_block is not None:
            h = self.mid_block(h, t_emb)
        return h, t_emb


class ShallowUViTDecoder(nn.Module):
    """LLM token map (B, D, g, g), the encoder's map as a skip, time embedding -> velocity."""

    def __init__(self, spec: GenDecoderSpec) -> None:
        super().__init__()
        joined = spec.in_channels + spec.channels
        self.mid_block = (
            ConvNextStack(joined, spec.layers_in_middle, spec.hidden_size, spec.norm_eps,
                          spec.use_bias)
            if spec.use_mid_block
            else None
        )
        widths = [joined] + [spec.channels] * (spec.upsamples - 1) + [spec.out_channels]
        self.out_convs = nn.ModuleList(
            Unpatchify(widths[i], widths[i + 1], spec.norm_eps, spec.use_bias)
            for i in range(spec.upsamples)
        )
        self.input_norm = LlamaRMSNorm(spec.in_channels, spec.norm_eps)

    def forward(self, x: torch.Tensor, skip: torch.Tensor, t_emb: torch.Tensor) -> torch.Tensor:
        x = torch.cat([_norm_channels(self.input_norm, x), skip], dim=1)
        if self.mid_block is not None:
            x = self.mid_block(x, t_emb)
        for unpatchify in self.out_convs:
            x = unpatchify(x)
        return x


# -- the whole model ----------------------------------------------------------------------


class JanusFlowModel(nn.Module):
    """Every part under the attribute name its checkpoint keys start with."""

    def __init__(self, config: JanusFlowConfig, attn_implementation: str | None = None) -> None:
        super().__init__()
        hidden = config.hidden_size
        self.config = config
        self.vision_und_enc_model = SiglipTower(config.und)
        self.vision_und_enc_aligner = nn.Linear(config.und.width, hidden)
        self.beg_of_und_embed = nn.Parameter(torch.zeros(1, hidden))
        self.vision_gen_enc_model = ShallowUViTEncoder(config.gen_enc)
        self.vision_gen_enc_aligner = nn.Linear(config.gen_enc.channels, hidden)
        self.vision_gen_dec_model = ShallowUViTDecoder(config.gen_dec)
        language = config.language_config()
        if attn_implementation is not None:
            language._attn_implementation = attn_implementation
        self.language_model = LlamaForCausalLM(language)
        self.vision_gen_dec_aligner_norm = LlamaRMSNorm(hidden, eps=language.rms_norm_eps)
        self.vision_gen_dec_aligner = nn.Linear(hidden, config.gen_dec.in_channels)

    def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) normalised pixels -> (B, 1 + patches, hidden): the begin-of-image
        embedding, then the aligned SigLIP features, as the understanding prompt takes them."""
        feats = self.vision_und_enc_aligner(self.vision_und_enc_model(pixels))
        head = self.beg_of_und_embed.to(feats.dtype).expand(feats.shape[0], 1, -1)
        return torch.cat([head, feats], dim=1)
