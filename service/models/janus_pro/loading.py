"""Loading Janus checkpoints of either layout into transformers' Janus classes.

transformers' layout (`model_type: janus`) loads with `from_pretrained`. DeepSeek's original
layout (`model_type: multi_modality`) is read here, renamed by `convert`, and handed to the
same `from_pretrained` as an in-memory state dict; its tokenizer files become a
`JanusProcessor` with our chat template for DeepSeek's SFT format.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import torch

from service.models import catalog
from service.models.catalog import CheckpointError
from service.models.checkpoints import convert
from service.models.prompts import format_of
from service.models.tokens import BOI, EOI, IMAGE, PAD

log = logging.getLogger(__name__)


def load_model_and_processor(
    path: str, device: str, dtype: torch.dtype, family: str | None = None
) -> tuple[Any, Any]:
    config = catalog.read_config(path)
    if config.get("model_type") == "multi_modality":
        return load_original(_local_dir(path), device, dtype, family)
    from transformers import JanusForConditionalGeneration, JanusProcessor

    processor = JanusProcessor.from_pretrained(path)
    # device_map loads the shards straight onto the device (no full copy in host RAM).
    model = JanusForConditionalGeneration.from_pretrained(path, dtype=dtype, device_map=device)
    return model, processor


def _local_dir(path: str) -> str:
    if os.path.isdir(path):
        return path
    from huggingface_hub import snapshot_download

    try:  # a hub id: the cached snapshot first, as read_config does
        return snapshot_download(path, local_files_only=True)
    except Exception:
        return snapshot_download(path)


def _json(directory: str, name: str) -> dict[str, Any]:
    file = os.path.join(directory, name)
    if not os.path.isfile(file):
        return {}
    with open(file, encoding="utf-8") as f:
        return json.load(f)


def read_weights(directory: str) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint dir: safetensors or PyTorch .bin, single or sharded."""
    from safetensors.torch import load_file

    for index_name, single in (
        ("model.safetensors.index.json", "model.safetensors"),
        ("pytorch_model.bin.index.json", "pytorch_model.bin"),
    ):
        index = _json(directory, index_name)
        files = sorted(set(index["weight_map"].values())) if index else []
        if not files and os.path.isfile(os.path.join(directory, single)):
            files = [single]
        if not files:
            continue
        state: dict[str, torch.Tensor] = {}
        for name in files:
            file = os.path.join(directory, name)
            if name.endswith(".safetensors"):
                state.update(load_file(file))
            else:  # mmap: the published .bin shards are pickles of the full tensors
                state.update(torch.load(file, map_location="cpu", weights_only=True, mmap=True))
        return state
    raise CheckpointError(f"{directory}: no model.safetensors or pytorch_model.bin weights")


def original_processor(directory: str, family: str | None = None) -> Any:
    """A JanusProcessor from DeepSeek's tokenizer.json / processor / preprocessor configs."""
    from transformers import JanusImageProcessorPil, JanusProcessor, PreTrainedTokenizerFast

    chat = _json(directory, "processor_config.json")
    image = _json(directory, "preprocessor_config.json")
    image_tag = chat.get("image_tag", IMAGE)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(
        directory,
        image_token=image_tag,
        boi_token=BOI,
        eoi_token=EOI,
        padding_side="left",
    )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = PAD
    for token in (image_tag, BOI, EOI, tokenizer.pad_token, tokenizer.bos_token):
        if token is None or tokenizer.convert_tokens_to_ids(token) in (
            None,
            tokenizer.unk_token_id,
        ):
            raise CheckpointError(f"{directory}: the tokenizer lacks the special token {token!r}")
    if tokenizer("a")["input_ids"][0] != tokenizer.bos_token_id:
        tokenizer.add_bos_token = True  # DeepSeek's prompts always start with BOS
    size = int(image.get("image_size", 384))
    image_processor = JanusImageProcessorPil(
        size={"height": size, "width": size},
        image_mean=image.get("image_mean", [0.5, 0.5, 0.5]),
        image_std=image.get("image_std", [0.5, 0.5, 0.5]),
        min_size=int(image.get("min_size", 14)),
        rescale_factor=float(image.get("rescale_factor", 1 / 255)),
        do_normalize=bool(image.get("do_normalize", True)),
    )
    return JanusProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        chat_template=format_of(family or catalog.family_of(directory)).chat_template(),
        use_default_system_prompt=True,  # DeepSeek's understanding prompt has it
        num_image_tokens=int(chat.get("num_image_tokens", (size // 16) ** 2)),
    )


def generation_config(tokenizer: Any) -> Any:
    """What transformers' own image `generate` reads (pad and begin-of-image ids)."""
    from transformers import GenerationConfig

    return GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        guidance_scale=5.0,
        temperature=1.0,
        generation_kwargs={"boi_token_id": tokenizer.convert_tokens_to_ids(BOI)},
    )


def load_original(
    directory: str, device: str, dtype: torch.dtype | None, family: str | None = None
) -> tuple[Any, Any]:
    """An original-layout checkpoint as (JanusForConditionalGeneration, JanusProcessor).

    `dtype` None keeps the checkpoint's own dtype.
    """
    from transformers import JanusForConditionalGeneration

    original = _json(directory, "config.json")
    state = read_weights(directory)
    if not os.path.isfile(os.path.join(directory, "tokenizer.json")):
        raise CheckpointError(f"{directory}: no tokenizer.json")
    processor = original_processor(directory, family)
    config = convert.janus_config(original, state, processor.tokenizer)
    converted, unused = convert.convert_state_dict(state)
    del state
    if dtype is None:
        dtype = next(v.dtype for v in converted.values() if v.is_floating_point())
    # The same from_pretrained as the transformers layout, fed the renamed tensors.
    model, info = JanusForConditionalGeneration.from_pretrained(
        None,
        config=config,
        state_dict=converted,
        dtype=dtype,
        device_map=device,
        output_loading_info=True,
    )
    tied = "lm_head.weight" if config.tie_word_embeddings else None
    missing = [k for k in info.get("missing_keys", []) if k != tied]
    if missing or info.get("mismatched_keys"):
        raise CheckpointError(
            f"{directory}: original-layout weights do not fit the converted model: "
            f"missing {sorted(missing)[:5]}, mismatched {list(info.get('mismatched_keys', []))[:5]}"
        )
    if unused:
        log.info("%s: ignored %d weights, e.g. %s", directory, len(unused), unused[:3])
    model.generation_config = generation_config(processor.tokenizer)
    return model.eval(), processor
