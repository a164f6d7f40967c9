"""The model catalog: families, their tasks and defaults, and which family a checkpoint is.

This is the only part of `service.models` the API imports (to list models and check
requests), so it never imports torch, transformers or a runner: it reads a checkpoint's
JSON files, and `huggingface_hub` only inside the functions that need it. Loading a runner
is `service.models.runners`.
"""

from __future__ import annotations

import json
import os
from typing import Any

from service.models.tokens import USER

JANUS = "janus"  # the original Janus-1.3B
JANUS_PRO = "janus-pro"  # Janus-Pro-1B / 7B
JANUSFLOW = "janusflow"
FAMILIES = (JANUS, JANUS_PRO, JANUSFLOW)

# DeepSeek's demos (`demo/app.py`, `app_januspro.py`, `app_janusflow.py`, `fastapi_app.py`):
# understanding samples with the sliders' temperature 0.1 and top_p 0.95, 512 new tokens,
# through `language_model.generate`, whose generation config (transformers 4.38, the
# reference's pin) also applies top_k 50. Generation: guidance 5 and temperature 1 for the
# VQ models, guidance 2 and 30 steps for JanusFlow, 384 px everywhere.
_UNDERSTAND_DEFAULTS: dict[str, Any] = {
    "max_new_tokens": 512,
    "temperature": 0.1,
    "top_p": 0.95,
    "top_k": 50,
}
_VQ_GENERATE: dict[str, Any] = {
    "num_images": 1, "guidance": 5.0, "temperature": 1.0, "image_size": 384
}
_DEFAULTS: dict[str, dict[str, dict[str, Any]]] = {
    JANUS: {"generate": _VQ_GENERATE, "understand": _UNDERSTAND_DEFAULTS},
    JANUS_PRO: {"generate": _VQ_GENERATE, "understand": _UNDERSTAND_DEFAULTS},
    JANUSFLOW: {
        "generate": {"num_images": 1, "guidance": 2.0, "steps": 30, "image_size": 384},
        "understand": _UNDERSTAND_DEFAULTS,
    },
}

_TASKS: dict[str, tuple[str, ...]] = {family: ("understand", "generate") for family in FAMILIES}


class CheckpointError(Exception):
    """A checkpoint that cannot be found, read or recognised."""


def _looks_like_hub_id(path: str) -> bool:
    # "owner/name" and nothing else: an absolute, relative or multi-level path is a
    # local directory that is simply missing, and must not trigger a network lookup.
    if os.path.isabs(path) or path.startswith((".", "~")) or (os.sep != "/" and os.sep in path):
        return False
    parts = path.split("/")
    return len(parts) == 2 and all(parts)


def _checkpoint_file(path: str, name: str) -> str | None:
    """The local path of file `name` of a checkpoint dir or hub id, or None if it has none."""
    if os.path.isdir(path):
        file = os.path.join(path, name)
        return file if os.path.isfile(file) else None
    if not _looks_like_hub_id(path):
        raise CheckpointError(f"{path}: no such checkpoint directory")
    from huggingface_hub import hf_hub_download

    try:
        # The cached copy first: an offline machine should not sit through the hub
        # client's retries for a file it already has.
        return hf_hub_download(path, name, local_files_only=True)
    except Exception:
        pass
    try:
        return hf_hub_download(path, name)
    except Exception as e:  # offline, unknown repo, gated, no such file, invalid id, ...
        if name == "config.json":
            raise CheckpointError(f"{path}: cannot fetch config.json from the hub: {e}") from e
        return None


def _read_json(path: str, name: str) -> Any:
    file = _checkpoint_file(path, name)
    if file is None:
        return None
    try:
        with open(file, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: cannot read {name}: {e}") from e


def read_config(path: str) -> dict[str, Any]:
    """Read `config.json` from a local checkpoint dir, or from the hub cache for a hub id."""
    config = _read_json(path, "config.json")
    if config is None:
        raise CheckpointError(f"{path}: no config.json in this directory")
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: config.json is not a JSON object")
    return config


def is_original_layout(config: dict[str, Any]) -> bool:
    """DeepSeek's own layout (`multi_modality`), as opposed to transformers' (`janus`)."""
    return config.get("model_type") == "multi_modality"


def family_from_config(config: dict[str, Any], path: str = "<config>") -> str:
    """The architecture a parsed `config.json` describes: `janusflow`, or `janus-pro` for
    the VQ models (Janus-1.3B and Janus-Pro share it; `family_of` tells them apart)."""
    model_type = config.get("model_type")
    if model_type == "janus":
        # transformers' converted layout: Janus-1.3B, Janus-Pro-1B/7B.
        return JANUS_PRO
    if model_type == "multi_modality":
        # DeepSeek's original layout; JanusFlow has a ConvNeXt-style gen encoder/decoder
        # pair instead of Janus' VQ tokenizer.
        if "vision_gen_enc_config" in config or "vision_gen_dec_config" in config:
            return JANUSFLOW
        if "gen_vision_config" in config:
            return JANUS_PRO
    raise CheckpointError(f"{path}: unrecognised checkpoint (model_type={model_type!r})")


def _names(tokens: Any) -> set[str]:
    """Token strings from a list of strings or of `{"content": ...}` objects."""
    if isinstance(tokens, dict):
        tokens = list(tokens.values())
    if not isinstance(tokens, list):
        return set()
    return {t if isinstance(t, str) else str(t.get("content")) for t in tokens
            if isinstance(t, str | dict)}


def _has_pro_roles(path: str) -> bool | None:
    """Whether the checkpoint's tokenizer knows Janus-Pro's `<|User|>` token; None if it
    ships no tokenizer files to tell."""
    processor = _read_json(path, "processor_config.json")
    if isinstance(processor, dict) and processor.get("sft_format") == "deepseek_old":
        return False  # Janus-1.3B's processor names the plain-role template outright
    seen = False
    specials = _read_json(path, "special_tokens_map.json")
    if isinstance(specials, dict):
        seen = True
        if USER in _names(specials.get("additional_special_tokens")):
            return True
    tokenizer_config = _read_json(path, "tokenizer_config.json")
    if isinstance(tokenizer_config, dict):
        seen = True
        for key in ("added_tokens_decoder", "additional_special_tokens", "extra_special_tokens"):
            if USER in _names(tokenizer_config.get(key)):
                return True
    tokenizer = _read_json(path, "tokenizer.json")
    if isinstance(tokenizer, dict):
        seen = True
        if USER in _names(tokenizer.get("added_tokens")):
            return True
    return False if seen else None


def family_of(path: str) -> str:
    """The model family of the checkpoint at `path` (a directory or a hub id).

    Janus-1.3B and Janus-Pro have one architecture and one config layout; what differs is
    the prompt format they were trained on. Janus-Pro's tokenizer carries `<|User|>` and
    `<|Assistant|>` as tokens of their own (its `special_tokens_map.json`), Janus-1.3B's
    does not (and its `processor_config.json` names the `deepseek_old` template), so the
    tokenizer files decide. A checkpoint without tokenizer files is taken as Janus-Pro.
    """
    family = family_from_config(read_config(path), path)
    if family == JANUS_PRO and _has_pro_roles(path) is False:
        return JANUS
    return family


def guess_family(model_id: str) -> str:
    """A family from a model id alone (`janusflow-1.3b`, `janus-1.3b`, `janus-pro-7b`): only
    for an API that cannot read a checkpoint the workers can."""
    name = model_id.lower()
    if "flow" in name:
        return JANUSFLOW
    if "pro" not in name and name.startswith("janus-1"):
        return JANUS
    return JANUS_PRO


def tasks_of(family: str) -> tuple[str, ...]:
    try:
        return _TASKS[family]
    except KeyError:
        raise CheckpointError(f"unknown model family {family!r}") from None


def defaults_of(family: str) -> dict[str, dict[str, Any]]:
    """Static per-task defaults (a fresh copy; callers may modify it)."""
    try:
        return {task: dict(values) for task, values in _DEFAULTS[family].items()}
    except KeyError:
        raise CheckpointError(f"unknown model family {family!r}") from None
