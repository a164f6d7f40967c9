"""Which runner serves which checkpoint, and the static facts the API shows about it.

The API process imports this module to list models and their defaults, and it must
never pay for (or depend on) torch, so nothing heavy is imported at module level: the
runner modules and `huggingface_hub` are imported inside the functions that need them.
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # only for type checkers; importing base at runtime is cheap but needless
    from service.models.base import ModelRunner

JANUS_PRO = "janus-pro"
JANUSFLOW = "janusflow"
JANUS_PRO_ORIGINAL = "janus-pro-original"

_UNDERSTAND_DEFAULTS: dict[str, Any] = {"max_new_tokens": 512, "temperature": 0.1, "top_p": 0.95}
_DEFAULTS: dict[str, dict[str, dict[str, Any]]] = {
    JANUS_PRO: {
        "generate": {"num_images": 1, "guidance": 5.0, "temperature": 1.0, "image_size": 384},
        "understand": _UNDERSTAND_DEFAULTS,
    },
    JANUSFLOW: {
        "generate": {"num_images": 1, "guidance": 2.0, "steps": 30, "image_size": 384},
        "understand": _UNDERSTAND_DEFAULTS,
    },
}
# The original-layout checkpoints are the same models as janus-pro once converted.
_DEFAULTS[JANUS_PRO_ORIGINAL] = _DEFAULTS[JANUS_PRO]

_TASKS: dict[str, tuple[str, ...]] = {
    JANUS_PRO: ("understand", "generate"),
    JANUSFLOW: ("understand", "generate"),
    JANUS_PRO_ORIGINAL: ("understand", "generate"),
}


class CheckpointError(Exception):
    """A checkpoint that cannot be found, read or recognised."""


def _looks_like_hub_id(path: str) -> bool:
    # "owner/name" and nothing else: an absolute, relative or multi-level path is a
    # local directory that is simply missing, and must not trigger a network lookup.
    if os.path.isabs(path) or path.startswith((".", "~")) or (os.sep != "/" and os.sep in path):
        return False
    parts = path.split("/")
    return len(parts) == 2 and all(parts)


def read_config(path: str) -> dict[str, Any]:
    """Read `config.json` from a local checkpoint dir, or from the hub cache for a hub id."""
    if os.path.isdir(path):
        config_path = os.path.join(path, "config.json")
        if not os.path.isfile(config_path):
            raise CheckpointError(f"{path}: no config.json in this directory")
    elif _looks_like_hub_id(path):
        try:
            from huggingface_hub import hf_hub_download

            try:
                # The cached copy first: only model_type matters here, and an offline
                # machine should not sit through the hub client's retries.
                config_path = hf_hub_download(path, "config.json", local_files_only=True)
            except Exception:
                config_path = hf_hub_download(path, "config.json")
        except Exception as e:  # offline, unknown repo, gated, invalid id, ...
            raise CheckpointError(f"{path}: cannot fetch config.json from the hub: {e}") from e
    else:
        raise CheckpointError(f"{path}: no such checkpoint directory")
    try:
        with open(config_path, encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: cannot read config.json: {e}") from e
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: config.json is not a JSON object")
    return config


def family_from_config(config: dict[str, Any], path: str = "<config>") -> str:
    """The model family a parsed `config.json` belongs to."""
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
            return JANUS_PRO_ORIGINAL
    raise CheckpointError(f"{path}: unrecognised checkpoint (model_type={model_type!r})")


def family_of(path: str) -> str:
    """The model family of the checkpoint at `path` (a directory or a hub id)."""
    return family_from_config(read_config(path), path)


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


def _runner_class(family: str) -> type[ModelRunner]:
    # Lazy: importing a runner module imports torch and transformers.
    if family == JANUS_PRO:
        from service.models.janus_pro import JanusProRunner

        return JanusProRunner
    if family == JANUSFLOW:
        try:
            from service.models.janusflow import JanusFlowRunner  # type: ignore[import-not-found]
        except ImportError as e:
            raise CheckpointError(f"the janusflow runner is not available: {e}") from e
        return JanusFlowRunner
    if family == JANUS_PRO_ORIGINAL:
        # Converted to transformers' layout in memory at load (service.models.convert).
        from service.models.janus_pro import JanusProOriginalRunner

        return JanusProOriginalRunner
    raise CheckpointError(f"unknown model family {family!r}")


def load_runner(
    path: str, device: str = "cpu", model_id: str = "", **options: Any
) -> ModelRunner:
    """Build the runner for the checkpoint at `path` and load its weights onto `device`.

    `options` go to the runner's constructor (e.g. `compile` for Janus-Pro,
    `upsample_1024` for JanusFlow); `runner_options` says which a family takes.
    """
    label = f"model {model_id!r}" if model_id else "checkpoint"

    def wrap(e: Exception, what: str = "") -> CheckpointError:
        message = f"{what}{e}"
        # read_config/family_of messages already start with the path; say it only once.
        where = "" if message.startswith(path) else f"{path}: "
        return CheckpointError(f"{label}: {where}{message}")

    try:
        runner = _runner_class(family_of(path))(path, device, **options)
    except CheckpointError as e:
        raise wrap(e) from e
    try:
        runner.load()
    except CheckpointError as e:
        raise wrap(e) from e
    except Exception as e:
        # Missing file or shard, corrupt safetensors, config/weights mismatch, bad device,
        # out of memory: to the caller every one of these means "this model cannot serve".
        raise wrap(e, f"failed to load: {type(e).__name__}: ") from e
    return runner


def runner_options(family: str, *, compile: bool = False, upsample_1024: bool = False) -> dict:
    """The worker's flags that apply to a family's runner."""
    if family == "janusflow":
        return {"upsample_1024": upsample_1024}
    return {"compile": compile}
