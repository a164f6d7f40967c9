"""A transformers-layout Janus checkpoint written in DeepSeek's original layout.

The inverse of `convert`, for tests and debugging: it is how the tiny original-layout
checkpoint is made (`tiny.write_tiny_original_checkpoint`), so the original-layout loader is
exercised end to end without any published weights.
"""

from __future__ import annotations

import json
import os
from typing import Any

from service.models.checkpoints.convert import to_original
from service.models.tokens import ASSISTANT, BOI, EOI, IMAGE, USER


def export_original(janus_dir: str, out_dir: str, family: str = "janus-pro") -> str:
    """Write a transformers-layout checkpoint in DeepSeek's original layout (for tests)."""
    from safetensors.torch import save_file
    from transformers import JanusConfig

    from service.models.janus_pro.loading import read_weights

    config = JanusConfig.from_pretrained(janus_dir)
    state = read_weights(janus_dir)
    # The original model never ties its output matrix to the input embeddings.
    state.setdefault("lm_head.weight", state["model.language_model.embed_tokens.weight"])
    original = {k: v.contiguous().clone() for k, v in to_original(state).items()}
    text, vision, vq = config.text_config, config.vision_config, config.vq_config
    dtype = str(next(iter(original.values())).dtype).removeprefix("torch.")

    def section(cls: str, model_type: str, **params: Any) -> dict[str, Any]:
        return {"cls": cls, "model_type": model_type, "params": params}

    heads = {} if vision.num_attention_heads == 16 else {"heads": vision.num_attention_heads}
    layout = {
        "architectures": ["MultiModalityCausalLM"],
        "model_type": "multi_modality",
        "torch_dtype": dtype,
        "vision_config": section(
            "CLIPVisionTower",
            "vision",
            image_size=vision.image_size,
            model_name="siglip_large_patch16_384",
            select_feature="same",
            select_layer=-1,
            **heads,
        ),
        "aligner_config": section(
            "MlpProjector",
            "aligner",
            depth=vision.depth,
            input_dim=vision.hidden_size,
            n_embed=vision.projection_dim,
            projector_type="mlp_gelu",
        ),
        "gen_vision_config": section(
            "VQ-16", "gen_vision", image_token_size=vq.num_embeddings, n_embed=vq.embed_dim
        ),
        "gen_aligner_config": section(
            "MlpProjector",
            "gen_aligner",
            depth=vq.num_hidden_layers,
            input_dim=vq.embed_dim,
            n_embed=vq.projection_dim,
            projector_type="mlp_gelu",
        ),
        "gen_head_config": section(
            "vision_head",
            "gen_head",
            image_token_embed=vq.projection_dim,
            image_token_size=vq.num_embeddings,
            n_embed=vq.image_token_embed_dim,
        ),
        "language_config": {
            "model_type": "llama",
            "torch_dtype": dtype,
            "vocab_size": text.vocab_size,
            "hidden_size": text.hidden_size,
            "intermediate_size": text.intermediate_size,
            "num_hidden_layers": text.num_hidden_layers,
            "num_attention_heads": text.num_attention_heads,
            "num_key_value_heads": text.num_key_value_heads,
            "max_position_embeddings": text.max_position_embeddings,
        },
    }
    os.makedirs(out_dir, exist_ok=True)
    save_file(original, os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
    _write_json(out_dir, "config.json", layout)
    _export_tokenizer(janus_dir, out_dir, vision.image_size, vision.num_image_tokens, family)
    return out_dir


def _write_json(directory: str, name: str, value: dict[str, Any]) -> None:
    with open(os.path.join(directory, name), "w", encoding="utf-8") as f:
        json.dump(value, f, indent=2, ensure_ascii=False)


def _export_tokenizer(
    janus_dir: str, out_dir: str, image_size: int, image_tokens: int, family: str
) -> None:
    # The files DeepSeek's repositories ship next to the weights, in their shapes.
    from transformers import JanusProcessor

    processor = JanusProcessor.from_pretrained(janus_dir)
    tok, ip = processor.tokenizer, processor.image_processor
    with open(os.path.join(janus_dir, "tokenizer.json"), encoding="utf-8") as f:
        tokenizer_json = f.read()
    with open(os.path.join(out_dir, "tokenizer.json"), "w", encoding="utf-8") as f:
        f.write(tokenizer_json)
    names = {"bos_token": tok.bos_token, "eos_token": tok.eos_token, "pad_token": tok.pad_token}
    _write_json(
        out_dir,
        "tokenizer_config.json",
        {
            **names,
            "add_bos_token": True,
            "add_eos_token": False,
            "legacy": True,
            "model_max_length": tok.model_max_length,
            "tokenizer_class": "LlamaTokenizerFast",
            "clean_up_tokenization_spaces": False,
        },
    )
    if family == "janus":
        # Janus-1.3B's map names bos/eos/pad only; its processor the plain-role template.
        _write_json(out_dir, "special_tokens_map.json", names)
        sft_format = "deepseek_old"
    else:
        extra = [IMAGE, BOI, EOI, USER, ASSISTANT]
        _write_json(
            out_dir, "special_tokens_map.json", {**names, "additional_special_tokens": extra}
        )
        sft_format = "deepseek"
    _write_json(
        out_dir,
        "processor_config.json",
        {
            "add_special_token": False,
            "ignore_id": -100,
            "image_tag": IMAGE,
            "mask_prompt": True,
            "num_image_tokens": image_tokens,
            "processor_class": "VLChatProcessor",
            "sft_format": sft_format,
        },
    )
    _write_json(
        out_dir,
        "preprocessor_config.json",
        {
            "background_color": [127, 127, 127],
            "do_normalize": True,
            "image_mean": list(ip.image_mean),
            "image_std": list(ip.image_std),
            "image_processor_type": "VLMImageProcessor",
            "image_size": image_size,
            "min_size": 14,
            "processor_class": "VLChatProcessor",
            "rescale_factor": 1 / 255,
        },
    )
