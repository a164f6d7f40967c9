"""DeepSeek's original Janus layout (`model_type: multi_modality`) <-> transformers' layout.

The original checkpoints (`deepseek-ai/Janus-Pro-7B`, ...) hold DeepSeek's `MultiModalityCausalLM`:
`language_model` (a LlamaForCausalLM), `vision_model.vision_tower` (a timm-style SigLIP ViT),
`aligner`, `gen_vision_model` (LlamaGen's VQ-16), `gen_aligner`, `gen_head`, `gen_embed`. The
same weights fit transformers' `JanusForConditionalGeneration` under other names; the vision
tower's fused qkv is split and its position table loses its batch axis. Sizes that the
original config only implies by name (vision tower, VQ model) are read from the weights.

`janus_pro.loading.load_original` converts in memory at load; `convert_checkpoint` writes a
transformers-layout copy once; `to_original` (the inverse, used by `export`) lets
tests build original-layout checkpoints.

The name rules below were checked against transformers' own conversion script
(`models/janus/convert_janus_weights_to_hf.py` in the transformers repository, which is
not shipped in the wheel): same renames, decoder `conv_blocks.N` -> `up.N` in the same
order, `attn_pool` and `codebook_used` dropped, qkv split in q, k, v order.
"""

from __future__ import annotations

import os
import re
from typing import Any

import torch

from service.models import catalog
from service.models.catalog import CheckpointError
from service.models.tokens import IMAGE

VISION_TOWER = "vision_model.vision_tower."
# Heads per published SigLIP name (not derivable from weight shapes). "heads" in the vision
# params overrides it: our extension, used only by small test checkpoints.
_VISION_HEADS = {"siglip_large_patch16_384": 16, "siglip_so400m_patch14_384": 16}

# (original, transformers) name templates, tried in order; {n} is a number, {p} encoder or
# decoder, {r} the rest of the name. The vision qkv and pos_embed are handled separately.
_RULES = [
    ("language_model.model.{r}", "model.language_model.{r}"),
    ("language_model.lm_head.{r}", "lm_head.{r}"),
    (VISION_TOWER + "patch_embed.proj.{r}", "model.vision_model.embeddings.patch_embedding.{r}"),
    (
        VISION_TOWER + "blocks.{n}.norm1.{r}",
        "model.vision_model.encoder.layers.{n}.layer_norm1.{r}",
    ),
    (
        VISION_TOWER + "blocks.{n}.norm2.{r}",
        "model.vision_model.encoder.layers.{n}.layer_norm2.{r}",
    ),
    (
        VISION_TOWER + "blocks.{n}.attn.proj.{r}",
        "model.vision_model.encoder.layers.{n}.self_attn.projection_layer.{r}",
    ),
    (VISION_TOWER + "blocks.{n}.mlp.{r}", "model.vision_model.encoder.layers.{n}.mlp.{r}"),
    (VISION_TOWER + "norm.{r}", "model.vision_model.post_layernorm.{r}"),
    ("aligner.layers.0.{r}", "model.aligner.fc1.{r}"),
    ("aligner.layers.2.{r}", "model.aligner.hidden_layers.0.{r}"),
    ("aligner.layers.4.{r}", "model.aligner.hidden_layers.1.{r}"),
    ("gen_aligner.layers.0.{r}", "model.generation_aligner.fc1.{r}"),
    ("gen_aligner.layers.2.{r}", "model.generation_aligner.hidden_layers.0.{r}"),
    ("gen_aligner.layers.4.{r}", "model.generation_aligner.hidden_layers.1.{r}"),
    ("gen_head.output_mlp_projector.{r}", "model.generation_head.proj_out.{r}"),
    ("gen_head.vision_head.{r}", "model.generation_head.vision_head.{r}"),
    ("gen_embed.{r}", "model.generation_embeddings.{r}"),
    (
        "gen_vision_model.encoder.conv_blocks.{n}.res.{r}",
        "model.vqmodel.encoder.down.{n}.block.{r}",
    ),
    ("gen_vision_model.encoder.conv_blocks.{n}.{r}", "model.vqmodel.encoder.down.{n}.{r}"),
    ("gen_vision_model.decoder.conv_blocks.{n}.res.{r}", "model.vqmodel.decoder.up.{n}.block.{r}"),
    ("gen_vision_model.decoder.conv_blocks.{n}.{r}", "model.vqmodel.decoder.up.{n}.{r}"),
    ("gen_vision_model.{p}.mid.0.{r}", "model.vqmodel.{p}.mid.block_1.{r}"),
    ("gen_vision_model.{p}.mid.1.{r}", "model.vqmodel.{p}.mid.attn_1.{r}"),
    ("gen_vision_model.{p}.mid.2.{r}", "model.vqmodel.{p}.mid.block_2.{r}"),
    ("gen_vision_model.{r}", "model.vqmodel.{r}"),
]
# Weights the transformers model has no place for: the SigLIP attention-pool head (Janus
# uses patch features), LlamaGen's codebook-usage counter, old rotary buffers.
_DROPPED = re.compile(
    r"(^vision_model\.vision_tower\.attn_pool\.|codebook_used$|rotary_emb\.inv_freq$)"
)
_QKV = re.compile(r"^vision_model\.vision_tower\.blocks\.(\d+)\.attn\.qkv\.(weight|bias)$")
_POS = "vision_model.vision_tower.pos_embed"
_HF_POS = "model.vision_model.embeddings.position_embedding.weight"
_HF_QKV = re.compile(
    r"^model\.vision_model\.encoder\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(.+)$"
)


def _compile(template: str) -> re.Pattern[str]:
    pattern = re.escape(template)
    for name, rx in (("n", r"\d+"), ("p", "encoder|decoder"), ("r", ".+")):
        pattern = pattern.replace(re.escape("{" + name + "}"), f"(?P<{name}>{rx})")
    return re.compile(f"^{pattern}$")


_FORWARD = [(_compile(src), dst) for src, dst in _RULES]
_BACKWARD = [(_compile(dst), src) for src, dst in _RULES]


def _rename(key: str, rules: list[tuple[re.Pattern[str], str]]) -> str | None:
    for pattern, target in rules:
        m = pattern.match(key)
        if m:
            return target.format(**m.groupdict())
    return None


def convert_state_dict(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Original names -> transformers names. Returns the new dict and the keys left out."""
    out: dict[str, torch.Tensor] = {}
    unused: list[str] = []
    for key, value in state.items():
        qkv = _QKV.match(key)
        if qkv:
            base = f"model.vision_model.encoder.layers.{qkv[1]}.self_attn."
            for name, part in zip("qkv", value.chunk(3, dim=0), strict=True):
                out[f"{base}{name}_proj.{qkv[2]}"] = part
        elif key == _POS:
            out[_HF_POS] = value.reshape(value.shape[-2], value.shape[-1])
        elif _DROPPED.search(key):
            unused.append(key)
        else:
            new = _rename(key, _FORWARD)
            if new is None:
                unused.append(key)
            else:
                out[new] = value
    return out, unused


def to_original(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers names -> original names (the inverse of `convert_state_dict`)."""
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        m = _HF_QKV.match(key)
        if m:
            qkv.setdefault((m[1], m[3]), {})[m[2]] = value
        elif key == _HF_POS:
            out[_POS] = value[None]
        else:
            new = _rename(key, _BACKWARD)
            if new is None:
                raise CheckpointError(f"no original-layout name for {key}")
            out[new] = value
    for (layer, kind), parts in qkv.items():
        out[f"{VISION_TOWER}blocks.{layer}.attn.qkv.{kind}"] = torch.cat([parts[c] for c in "qkv"])
    return out


# -- configuration ---------------------------------------------------------------------


def _params(config: dict[str, Any], name: str) -> dict[str, Any]:
    section = config.get(name)
    if not isinstance(section, dict):
        raise CheckpointError(f"config.json has no {name}")
    return section.get("params") or {}


def _count(state: dict[str, Any], prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    found = {int(m[1]) for k in state if (m := pattern.match(k))}
    return max(found) + 1 if found else 0


def janus_config(original: dict[str, Any], state: dict[str, torch.Tensor], tokenizer: Any) -> Any:
    """A `JanusConfig` for an original config.json and its (original-name) weights."""
    from transformers import JanusConfig, JanusVisionConfig, JanusVQVAEConfig, LlamaConfig

    def shape(key: str) -> tuple[int, ...]:
        if key not in state:
            raise CheckpointError(f"weights lack {key}")
        return tuple(state[key].shape)

    language = dict(original.get("language_config") or {})
    for drop in ("torch_dtype", "dtype", "architectures", "_name_or_path", "transformers_version"):
        language.pop(drop, None)
    text = LlamaConfig(**language)
    ids = tokenizer.convert_tokens_to_ids
    text.bos_token_id, text.eos_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id
    text.pad_token_id = tokenizer.pad_token_id

    vparams, aparams = _params(original, "vision_config"), _params(original, "aligner_config")
    width, _, patch, _ = shape(VISION_TOWER + "patch_embed.proj.weight")
    image_size = int(vparams.get("image_size", 384))
    heads = vparams.get("heads") or _VISION_HEADS.get(vparams.get("model_name", ""))
    vision = JanusVisionConfig(
        hidden_size=width,
        num_hidden_layers=_count(state, VISION_TOWER + "blocks."),
        num_attention_heads=int(heads or max(1, width // 64)),
        image_size=image_size,
        patch_size=patch,
        mlp_ratio=shape(VISION_TOWER + "blocks.0.mlp.fc1.weight")[0] / width,
        projection_dim=int(aparams.get("n_embed", text.hidden_size)),
        depth=int(aparams.get("depth", 2)),
        num_image_tokens=(image_size // patch) ** 2,
    )

    gvq, galign = _params(original, "gen_vision_config"), _params(original, "gen_aligner_config")
    ghead = _params(original, "gen_head_config")
    codes, embed_dim = shape("gen_vision_model.quantize.embedding.weight")
    base = shape("gen_vision_model.encoder.conv_in.weight")[0]
    levels = _count(state, "gen_vision_model.encoder.conv_blocks.")
    multipliers = [
        shape(f"gen_vision_model.encoder.conv_blocks.{i}.res.0.conv2.weight")[0] // base
        for i in range(levels)
    ]
    # As transformers' own conversion script (convert_janus_weights_to_hf.py) reads them.
    projection = int(galign.get("n_embed", text.hidden_size))
    token_embed = int(ghead.get("image_token_embed", projection))
    vq = JanusVQVAEConfig(
        embed_dim=embed_dim,
        num_embeddings=codes,
        latent_channels=shape("gen_vision_model.quant_conv.weight")[1],
        base_channels=base,
        channel_multiplier=multipliers,
        num_res_blocks=_count(state, "gen_vision_model.encoder.conv_blocks.0.res."),
        projection_dim=projection,
        image_token_embed_dim=token_embed,
        num_hidden_layers=int(galign.get("depth", 2)),
    )
    if int(gvq.get("image_token_size", codes)) != codes:
        raise CheckpointError("gen_vision_config image_token_size does not match the codebook")
    return JanusConfig(
        text_config=text,
        vision_config=vision,
        vq_config=vq,
        image_token_id=ids(IMAGE),
        # DeepSeek's LLM has its own output matrix; tie only if the checkpoint has none.
        tie_word_embeddings="language_model.lm_head.weight" not in state,
    )


# -- whole checkpoints -----------------------------------------------------------------


def convert_checkpoint(src_dir: str, dst_dir: str) -> str:
    """Write a transformers-layout copy of the original-layout checkpoint at `src_dir`."""
    from service.models.janus_pro.loading import load_original

    family = catalog.family_of(src_dir)
    if family == catalog.JANUSFLOW or not catalog.is_original_layout(
        catalog.read_config(src_dir)
    ):
        layout = "janusflow" if family == catalog.JANUSFLOW else "transformers layout"
        raise CheckpointError(f"{src_dir}: not an original-layout Janus checkpoint ({layout})")
    if os.path.abspath(src_dir) == os.path.abspath(dst_dir):
        raise CheckpointError(f"{dst_dir}: the converted copy needs its own directory")
    model, processor = load_original(src_dir, "cpu", None, family)  # keeps its own dtype
    os.makedirs(dst_dir, exist_ok=True)
    model.save_pretrained(dst_dir)
    processor.save_pretrained(dst_dir)
    return dst_dir
