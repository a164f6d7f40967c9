"""Batch-invariant matrix products: a job's numbers never depend on its neighbours.

A runner stacks the rows of several jobs and runs them through each layer at once. The
elementwise ops and the per-row reductions (norms, softmax, attention per batch item) give a
row the same result whatever else is in the batch, but a matrix product does not: BLAS and
oneDNN pick kernels, blockings and thread splits by the product's shape, so the same row
times the same weight can round differently when the batch has 1 row or 8 (seen on AVX2
CPUs: one pixel level off between two identical rows of a JanusFlow batch).

Here every `nn.Linear`, `nn.Conv2d` and activation module (and the functional `linear`
and activation the Janus decode loop calls) runs each sample of the leading batch
dimension as a call of its own, shaped exactly as when that sample is alone: activations
too, because a large elementwise op is split between threads at offsets that depend on the
tensor's size and each share's tail is computed by scalar code. What still differs between
machines or thread counts is said in README, "Reproducibility". The price is one library
call per row instead of one per batch, measured in `bench/RESULTS.md`.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


def invariant_linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """`F.linear`, one leading-dimension sample at a time (each call shaped as if alone)."""
    if x.dim() < 2 or x.shape[0] <= 1:
        return F.linear(x, weight, bias)
    return torch.cat([F.linear(x[i : i + 1], weight, bias) for i in range(x.shape[0])])


def per_row(fn: Any) -> Any:
    """`fn` applied to each leading-dimension sample on its own (activations: a large tensor
    is split between threads at offsets that depend on its size, and each share's tail is
    computed by scalar code, so a row's last bits would depend on the batch)."""

    def apply(x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 2 or x.shape[0] <= 1:
            return fn(x)
        return torch.cat([fn(x[i : i + 1]) for i in range(x.shape[0])])

    return apply


def _is_activation(module: nn.Module) -> bool:
    kind = type(module).__module__
    return kind in ("torch.nn.modules.activation", "transformers.activations")


def make_batch_invariant(model: nn.Module) -> int:
    """Give every Linear, Conv2d and activation module under `model` a per-sample forward;
    returns how many.

    Done on the loaded module instances (not on torch's functions), so nothing outside
    this model changes behaviour. The per-sample forward wraps the module's current one
    (a hook a library placed there keeps working), and doing it twice changes nothing.
    """
    count = 0
    for module in model.modules():
        if isinstance(module, nn.Linear | nn.Conv2d) or _is_activation(module):
            if "_batched_forward" not in vars(module):
                module._batched_forward = module.forward  # type: ignore[assignment]
                module.forward = per_row(module._batched_forward)  # type: ignore[method-assign]
            count += 1
    return count


def undo_batch_invariant(model: nn.Module) -> None:
    """Back to the batched forwards (benchmarks compare both in one process)."""
    for module in model.modules():
        if "_batched_forward" in vars(module):
            module.forward = vars(module).pop("_batched_forward")  # type: ignore[method-assign]
