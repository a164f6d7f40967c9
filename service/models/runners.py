"""Build and load the runner that serves a checkpoint (the worker's side of the catalog).

Each family's runner lives in its own package and is imported only when a worker loads
it, because importing one imports torch and transformers.
"""

from __future__ import annotations

from typing import Any

from service.models.base import ModelRunner
from service.models.catalog import JANUS, JANUS_PRO, JANUSFLOW, CheckpointError, family_of


def _runner_class(family: str) -> type[ModelRunner]:
    # Lazy: importing a runner module imports torch and transformers.
    if family in (JANUS, JANUS_PRO):
        # Both layouts: the original one is converted in memory at load (janus_pro.loading).
        from service.models.janus_pro.runner import JanusProRunner

        return JanusProRunner
    if family == JANUSFLOW:
        try:
            from service.models.janusflow.runner import JanusFlowRunner
        except ImportError as e:
            raise CheckpointError(f"the janusflow runner is not available: {e}") from e
        return JanusFlowRunner
    raise CheckpointError(f"unknown model family {family!r}")


def load_runner(
    path: str, device: str = "cpu", model_id: str = "", family: str | None = None,
    **options: Any,
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
        # A caller that already read the family passes it: reading it may parse the
        # multi-megabyte tokenizer.json (Janus-1.3B vs Janus-Pro).
        family = family or family_of(path)
        if family in (JANUS, JANUS_PRO):
            options = {**options, "family": family}
        runner = _runner_class(family)(path, device, **options)
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


def runner_options(
    family: str,
    *,
    compile: bool | None = None,
    upsample_1024: bool = False,
    vae_path: str | None = None,
    batch_invariant: str = "auto",
) -> dict[str, Any]:
    """The worker's flags and settings that apply to a family's runner (runners read no
    environment or settings of their own). `batch_invariant`: auto, on or off."""
    if batch_invariant not in ("auto", "on", "off"):
        raise ValueError(f"batch_invariant must be auto, on or off, not {batch_invariant!r}")
    invariant = {"batch_invariant": None if batch_invariant == "auto" else batch_invariant == "on"}
    if family == JANUSFLOW:
        vae = {"vae_path": vae_path} if vae_path else {}
        return {"upsample_1024": upsample_1024, **vae, **invariant}
    return {"compile": compile, **invariant}
