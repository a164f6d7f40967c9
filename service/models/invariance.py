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
tensor's size and each share's tail is computed by scalar code. The price is one library
call per row instead of one per batch, measured in `bench/RESULTS.md`.

On a CPU the mode also avoids what was seen to round differently at another thread count
(bench/RESULTS.md, "Thread counts"): SDPA's CPU kernel splits one query's keys between
threads (every language model's decode step), so that case runs as explicit products and
a softmax (`invariant_attention`); oneDNN's 1x1 convolution splits its reduction, so a
pointwise Conv2d runs as a Linear over the pixels (`pointwise_conv`); GroupNorm's
channels-last kernel splits pixels between threads, so it gets NCHW input
(`contiguous_group_norm`); and a large elementwise op is split between threads with a
scalar tail per share, so activations run over fixed serial chunks (`in_serial_chunks`).
What still differs between machines is said in README, "Reproducibility".
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode


def invariant_linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """`F.linear`, one leading-dimension sample at a time (each call shaped as if alone)."""
    if x.dim() < 2 or x.shape[0] <= 1:
        return F.linear(x, weight, bias)
    return torch.cat([F.linear(x[i : i + 1], weight, bias) for i in range(x.shape[0])])


def invariant_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
) -> torch.Tensor:
    """`F.scaled_dot_product_attention` (no dropout) whose bits do not depend on the CPU's
    thread count.

    SDPA's CPU kernel gives each thread whole query blocks, each over all the keys, except
    for a single query (a decode step), whose keys it splits between threads: that one
    case runs here as two batched products and a softmax, each (row, head) one product
    whose shape does not depend on the thread count. (Not `sdpa_kernel(SDPBackend.MATH)`:
    that context manager flips process-wide flags, and the finisher's thread decodes
    meanwhile.)
    """
    if q.shape[-2] > 1:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal,
                                              scale=scale, enable_gqa=enable_gqa)
    if enable_gqa and k.shape[-3] != q.shape[-3]:
        repeat = q.shape[-3] // k.shape[-3]
        k, v = k.repeat_interleave(repeat, -3), v.repeat_interleave(repeat, -3)
    scores = (q @ k.transpose(-2, -1)) * (q.shape[-1] ** -0.5 if scale is None else scale)
    # One query: a causal mask (top-left aligned, as SDPA's) keeps only the first key.
    if is_causal:
        scores[..., 1:] = float("-inf")
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attn_mask, float("-inf"))
        else:
            scores = scores + attn_mask
    return scores.softmax(-1, dtype=torch.float32).to(v.dtype) @ v


def pointwise_conv(module: nn.Conv2d, batched: Any) -> Any:
    """On a CPU, a 1x1, stride-1, ungrouped Conv2d's forward as a Linear over the pixels
    (elsewhere, and for any other Conv2d, `batched`)."""
    if not (module.kernel_size == (1, 1) and module.stride == (1, 1) and module.groups == 1
            and module.padding in ((0, 0), "valid") and module.dilation == (1, 1)
            and module.padding_mode == "zeros"):
        return batched

    def forward(x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu":
            return batched(x)
        out = F.linear(x.movedim(-3, -1), module.weight.flatten(1), module.bias).movedim(-1, -3)
        # In the input's layout: the kernels after it may choose their thread split by it.
        return out.contiguous() if x.is_contiguous() else out

    return forward


# ATen runs an elementwise op of fewer elements than its grain (32,768) on the calling
# thread. A larger one is split between threads at offsets that depend on their number,
# and each share's last few elements take the scalar path, whose exp/erf/tanh round
# differently from the vector path's (seen on SiLU at JanusFlow's 384 px shape).
SERIAL_CHUNK = 16384  # below the grain, and a multiple of every vector width

# Activation modules that are elementwise (Softmax and PReLU, say, are not).
ELEMENTWISE = (nn.SiLU, nn.GELU, nn.Sigmoid, nn.Tanh, nn.ReLU, nn.Mish, nn.Softplus, nn.ELU,
               nn.LeakyReLU, nn.Hardswish, nn.Hardsigmoid)


def contiguous_group_norm(batched: Any) -> Any:
    """GroupNorm over an NCHW copy of a channels-last input: the channels-last CPU kernel
    splits the pixels between threads at some thread counts (seen at 3 and 4), the NCHW one
    reduces each group on one thread."""

    def forward(x: torch.Tensor) -> torch.Tensor:
        return batched(x.contiguous() if x.device.type == "cpu" else x)

    return forward


def in_serial_chunks(fn: Any) -> Any:
    """Elementwise `fn` over fixed chunks of the flattened tensor, each run serially: the
    scalar tails fall at the same places whatever the thread count."""

    def apply(x: torch.Tensor) -> torch.Tensor:
        if x.numel() <= SERIAL_CHUNK or x.device.type != "cpu":  # a GPU has no such split
            return fn(x)
        flat = x.contiguous().view(-1)
        return torch.cat([fn(part) for part in flat.split(SERIAL_CHUNK)]).view(x.shape)

    return apply


class _SerialActivations(TorchFunctionMode):
    """Functional elementwise activations run in serial chunks while this mode is on (a
    TorchFunctionMode is per thread: the engine's thread is not affected)."""

    FUNCTIONS = frozenset({torch.sigmoid, torch.Tensor.sigmoid, torch.tanh, torch.Tensor.tanh,
                           F.silu, F.gelu, F.mish, F.softplus})

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None):
        kwargs = kwargs or {}
        if func in self.FUNCTIONS and len(args) == 1 and isinstance(args[0], torch.Tensor):
            return in_serial_chunks(lambda x: func(x, **kwargs))(args[0])
        return func(*args, **kwargs)


def serial_activations(module: nn.Module) -> None:
    """For a module whose code calls activations as functions (transformers' Janus VQ
    decoder: `h *= torch.sigmoid(h)`): its forward runs them in serial chunks."""
    if "_unserial_forward" in vars(module):
        return
    module._unserial_forward = module.forward  # type: ignore[assignment]

    def forward(*args: Any, **kwargs: Any) -> Any:
        with _SerialActivations():
            return module._unserial_forward(*args, **kwargs)

    module.forward = forward  # type: ignore[method-assign]


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


def _is_elementwise(module: nn.Module) -> bool:
    return isinstance(module, ELEMENTWISE) or type(module).__module__ == "transformers.activations"


def _invariant_forward(module: nn.Module, threads: bool) -> Any:
    """The module's forward in the invariant mode, or None where it needs no change."""
    batched = module.forward
    if threads and isinstance(module, nn.GroupNorm):
        return contiguous_group_norm(batched)  # per sample already: only its layout
    if isinstance(module, nn.Conv2d):
        return per_row(pointwise_conv(module, batched) if threads else batched)
    if _is_activation(module):
        serial = threads and _is_elementwise(module)
        return per_row(in_serial_chunks(batched) if serial else batched)
    if isinstance(module, nn.Linear):
        return per_row(batched)
    return None


def make_batch_invariant(model: nn.Module, threads: bool = True) -> int:
    """Give every Linear, Conv2d and activation module under `model` a per-sample forward;
    returns how many. `threads` (on a CPU): also a pointwise Conv2d as a Linear,
    activations in serial chunks and GroupNorm on NCHW input, so that the thread count
    does not change the bits either (False only for bench/invariance.py's comparison).

    Done on the loaded module instances (not on torch's functions), so nothing outside
    this model changes behaviour. The per-sample forward wraps the module's current one
    (a hook a library placed there keeps working, except around a pointwise convolution
    on a CPU, which calls `F.linear` itself), and doing it twice changes nothing.
    """
    count = 0
    for module in model.modules():
        wrapped = "_batched_forward" in vars(module)
        forward = None if wrapped else _invariant_forward(module, threads)
        if forward is not None:
            module._batched_forward = module.forward  # type: ignore[assignment]
            module.forward = forward  # type: ignore[method-assign]
        count += wrapped or forward is not None
    return count


def undo_batch_invariant(model: nn.Module) -> None:
    """Back to the batched forwards (benchmarks compare both in one process)."""
    for module in model.modules():
        if "_batched_forward" in vars(module):
            module.forward = vars(module).pop("_batched_forward")  # type: ignore[method-assign]
