"""A tiny, randomly initialised JanusFlow checkpoint in the published layout.

`config.json` in DeepSeek's `multi_modality` format (tiny widths; the understanding
encoder's shape given by the `width`/`layers`/`heads`/`mlp_ratio` extension keys),
`model.safetensors` under the published key names, `tokenizer.json` with DeepSeek's
special tokens, `preprocessor_config.json` / `processor_config.json` like the published
ones, and a tiny diffusers `AutoencoderKL` (SDXL-VAE structure: 4 levels, 8x, 4 latent
channels) in `vae/`. It loads through exactly the code path of the real weights.
Deterministic given `seed`.
"""

from __future__ import annotations

import json
import os
from typing import Any

from service.models.checkpoints.tiny import train_byte_bpe
from service.models.janusflow.config import BOS, EOS, PAD, SPECIAL_TOKENS


def _tokenizer(vocab_size: int):  # -> tokenizers.Tokenizer
    return train_byte_bpe(vocab_size, SPECIAL_TOKENS, BOS)


def tiny_config(image_size: int, vocab_size: int) -> dict[str, Any]:
    hidden = 64
    return {
        "architectures": ["MultiModalityCausalLM"],
        "model_type": "multi_modality",
        "torch_dtype": "float32",
        "language_config": {
            "model_type": "llama",
            "hidden_size": hidden,
            "intermediate_size": 2 * hidden,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 2048,
            "vocab_size": vocab_size,
            "torch_dtype": "float32",
        },
        "vision_und_enc_config": {
            "cls": "CLIPVisionTower",
            "model_type": "vision_und_enc",
            "params": {
                "image_size": image_size,
                "model_name": "siglip_large_patch16_384",
                "select_feature": "same",
                "select_layer": -1,
                # Not in the published file: the tiny SigLIP's own shape.
                "width": 32,
                "layers": 2,
                "heads": 2,
                "mlp_ratio": 2,
            },
        },
        "vision_gen_enc_config": {
            "cls": "ShallowUViTEncoder",
            "model_type": "vision_gen_enc",
            "params": {
                "input_channels": 4,
                "block_out_channels": [32],
                "kernel_size": 2,
                "stride": 2,
                "padding": 0,
                "layers_in_middle": 2,
                "hidden_size": hidden,
                "use_mid_block": True,
                "elementwise_affine": True,
            },
        },
        "vision_gen_dec_config": {
            "cls": "ShallowUViTDecoder",
            "model_type": "vision_gen_dec",
            "params": {
                "in_channels": 32,
                "out_channels": 4,
                "block_out_channels": [32],
                "upsamples": 1,
                "layers_in_middle": 2,
                "hidden_size": hidden,
                "use_mid_block": True,
                "elementwise_affine": True,
                "norm_type": "RMSNorm",
            },
        },
    }


def tiny_vae(image_size: int):  # -> diffusers.AutoencoderKL
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 16, 16, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=image_size,
        scaling_factor=0.13025,  # the SDXL VAE's
    )


def _write_json(path: str, data: dict[str, Any]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, ensure_ascii=False)
        f.write("\n")


def write_tiny_janusflow(out_dir: str, *, image_size: int = 384, seed: int = 0) -> str:
    """Write a tiny random JanusFlow checkpoint into `out_dir` and return `out_dir`."""
    if image_size % 16:
        # 16 px SigLIP patches; the VAE's 8x and the generation encoder's stride 2.
        raise ValueError(f"image_size must be a multiple of 16, got {image_size}")
    import torch
    from safetensors.torch import save_file

    from service.models.janusflow.config import parse_config
    from service.models.janusflow.load import WEIGHTS, build_model

    tokenizer = _tokenizer(vocab_size=400)
    vocab = -(-tokenizer.get_vocab_size() // 64) * 64  # every id, rounded up like real vocabs
    config = tiny_config(image_size, vocab)

    torch.manual_seed(seed)
    model = build_model(parse_config(config), device="cpu")
    with torch.no_grad():  # parameters the modules start at zero: make them count
        for name, p in model.named_parameters():
            if not p.any():
                p.normal_(0.0, 0.02 if "bias" in name or "embed" in name else 0.5)
    vae = tiny_vae(image_size)

    os.makedirs(out_dir, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, os.path.join(out_dir, WEIGHTS), metadata={"format": "pt"})
    _write_json(os.path.join(out_dir, "config.json"), config)
    vae.save_pretrained(os.path.join(out_dir, "vae"))

    tokenizer.save(os.path.join(out_dir, "tokenizer.json"))
    _write_json(
        os.path.join(out_dir, "tokenizer_config.json"),
        {
            "tokenizer_class": "LlamaTokenizerFast",
            "bos_token": BOS,
            "eos_token": EOS,
            "pad_token": None,
            "add_bos_token": True,
            "add_eos_token": False,
            "model_max_length": 16384,
            "legacy": True,
            "clean_up_tokenization_spaces": False,
        },
    )
    _write_json(
        os.path.join(out_dir, "special_tokens_map.json"),
        {
            "bos_token": BOS,
            "eos_token": EOS,
            "pad_token": PAD,
            "additional_special_tokens": [t for t in SPECIAL_TOKENS if t not in (BOS, EOS, PAD)],
        },
    )
    _write_json(
        os.path.join(out_dir, "preprocessor_config.json"),
        {
            "image_processor_type": "VLMImageProcessor",
            "processor_class": "VLChatProcessor",
            "image_size": image_size,
            "min_size": 14,
            "do_normalize": True,
            "rescale_factor": 1 / 255,
            "image_mean": [0.5, 0.5, 0.5],
            "image_std": [0.5, 0.5, 0.5],
            "background_color": [127, 127, 127],
        },
    )
    _write_json(
        os.path.join(out_dir, "processor_config.json"),
        {
            "processor_class": "VLChatProcessor",
            "image_tag": "<image_placeholder>",
            "num_image_tokens": (image_size // 16) ** 2,
            "add_special_token": False,
            "sft_format": "deepseek",
            "mask_prompt": True,
            "ignore_id": -100,
        },
    )
    return out_dir
