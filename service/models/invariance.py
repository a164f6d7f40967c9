"""Batch-invariant matrix products: a job's numbers never depend on its neighbours.

A runner stacks the rows of several jobs and runs them through each layer at once. The
elementwise ops and the per-row reductions (norms, softmax, attention per batch item) give a
row the same result whatever else is in the batch, but a matrix product does not: BLAS and
oneDNN pick kernels, blockings and thread splits by the product's shape, so the same row
times the same weight can round differently when the batch has 1 row or 8 (seen on AVX2
CPUs: one pixel level off between two identical rows of a JanusFlow batch).

Here every `nn.Linear` and `nn.Conv2d` (and the functional `linear` the Janus decode loop
calls) runs each sample of the leading batch dimension as a call of its own, shaped exactly
as when that sample is alone, so the products no longer depend on the batch. Not yet
covered: elementwise kernels split a large batched tensor between threads at offsets that
depend on the batch (README, "Reproducibility"). The price is one library call per row
instead of one per batch, measured in `bench/RESULTS.md` (`bench/invariance.py`).
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


def _linear_forward(module: nn.Linear) -> Any:
    def forward(x: torch.Tensor) -> torch.Tensor:
        return invariant_linear(x, module.weight, module.bias)

    return forward


def _conv_forward(module: nn.Conv2d) -> Any:
    plain = module.forward

    def forward(x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 4 or x.shape[0] <= 1:
            return plain(x)
        return torch.cat([plain(x[i : i + 1]) for i in range(x.shape[0])])

    return forward


def make_batch_invariant(model: nn.Module) -> int:
    """Give every Linear and Conv2d under `model` the per-sample forward; returns how many.

    Done on the loaded module instances (not on torch's functions), so nothing outside
    this model changes behaviour.
    """
    count = 0
    for module in model.modules():
        if isinstance(module, nn.Linear):
            module.forward = _linear_forward(module)  # type: ignore[method-assign]
            count += 1
        elif isinstance(module, nn.Conv2d):
            module.forward = _conv_forward(module)  # type: ignore[method-assign]
            count += 1
    return count


def undo_batch_invariant(model: nn.Module) -> None:
    """Back to the library's batched forwards (benchmarks compare both in one process)."""
    for module in model.modules():
        if isinstance(module, nn.Linear | nn.Conv2d) and "forward" in vars(module):
            del module.forward
