"""torch.compile for the engines' step (`--compile`): what is compiled, and how.

Two kinds of function, both with dynamic shapes (the row count changes whenever a job
joins or leaves, and neither may recompile):

- The heads (the image head with its guidance mix, the text head): `frozen`. Their
  weights become constants of the graph (inductor's freezing), which lets max-autotune
  pick inductor's own GEMM kernel for a product of a few rows against a wide matrix.
  On a 2-core AMD EPYC, MKL runs [2 x 256] x [256 x 16384] several times slower than
  the same product laid out the other way, and inductor's kernel beat both
  (`bench/products.py`, bench/RESULTS.md "One engine"). On CUDA without max-autotune: cuBLAS has no
  such gap that we know of, and autotuning every head shape there would add minutes to
  a worker's warm-up (unmeasured).
- The decoder layers' math (`lm.LeanLM.compile`, on CUDA): `dynamic`, weights as inputs
  (one graph serves every layer). Their cache writes stay eager: an in-place write to a
  graph input makes the graph copy the whole cache back every call.

CUDA graphs are not used yet: every row count and length bucket would be a graph of its
own, and no GPU has measured whether that pays.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def frozen(fn: Callable[..., Any], device: str) -> Callable[..., Any]:
    """`fn` compiled with the parameters of the modules it calls as constants. Only for
    inference: frozen weights no longer follow the modules' parameters."""
    import torch
    import torch._inductor.config as inductor

    inductor.freezing = True  # process-wide; a worker only ever runs inference
    mode = None if device.startswith("cuda") else "max-autotune-no-cudagraphs"
    return torch.compile(fn, dynamic=True, mode=mode)


def dynamic(fn: Callable[..., Any]) -> Callable[..., Any]:
    """`fn` compiled once for every row count and length (its tensors are inputs)."""
    import torch

    return torch.compile(fn, dynamic=True)
