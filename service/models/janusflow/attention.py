"""Attention for JanusFlow's ODE steps: rows attend in groups, each over its own keys.

The Llama runs with this function registered as its attention implementation. Without a
`janusflow_plan` keyword it is plain SDPA (text generation for understanding). With one,
the batch's rows are split into `Group`s and each group attends over

    [its prefix keys (computed once, before the first ODE step)] + [this call's keys],

causally (or under its own mask). The prefix is a job's prompt (shared by that job's image rows), or
the lone BOS token that every unconditional row sees, so the prompt never runs again
after the first step and no row ever sees another job's padding: a job's numbers are the
same alone or batched. A plan may also `store` the keys and values it computes, which is
how the prefix cache is filled.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from service.models.invariance import invariant_attention

ATTN_IMPLEMENTATION = "janusflow_grouped"
ATTN_INVARIANT = "janusflow_grouped_invariant"  # the same through `invariant_attention`

KV = tuple[torch.Tensor, torch.Tensor]  # (keys, values), each (rows, kv_heads, length, head_dim)


@dataclass
class Group:
    start: int  # first batch row of the group
    stop: int  # one past its last row
    offset: int = 0  # first real position: the group's rows are left-padded before it
    prefix: list[KV] | None = None  # per layer; batch 1 (broadcast to the rows)
    mask: torch.Tensor | None = None  # bool (prefix + queries, same); None: causal


@dataclass
class Plan:
    groups: list[Group]
    store: dict[int, KV] | None = None  # layer index -> this call's keys/values


def grouped_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    *,
    invariant: bool = False,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """`invariant` (registered as ATTN_INVARIANT, the batch-invariant mode on a CPU): through
    `invariant_attention`, since SDPA's CPU kernel splits one query's keys between threads."""
    plan: Plan | None = kwargs.pop("janusflow_plan", None)
    attend = invariant_attention if invariant else F.scaled_dot_product_attention
    if plan is not None:
        return _grouped(module, query, key, value, plan, scaling, attend)
    if not invariant:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    # As transformers' SDPA path: causal only without a mask and past the first token.
    causal = kwargs.get("is_causal")
    causal = getattr(module, "is_causal", True) if causal is None else causal
    causal = causal and attention_mask is None and query.shape[2] > 1
    o = invariant_attention(query, key, value, attn_mask=attention_mask, is_causal=causal,
                            scale=scaling, enable_gqa=key.shape[1] != query.shape[1])
    return o.transpose(1, 2).contiguous(), None


def _grouped(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    plan: Plan,
    scaling: float | None,
    attend: Any,
) -> tuple[torch.Tensor, None]:
    layer = module.layer_idx
    rows, heads, length, head_dim = query.shape
    extra = {"enable_gqa": True} if key.shape[1] != heads else {}
    out = query.new_zeros(rows, length, heads, head_dim)
    for g in plan.groups:
        q = query[g.start : g.stop, :, g.offset :]
        k = key[g.start : g.stop, :, g.offset :]
        v = value[g.start : g.stop, :, g.offset :]
        if plan.store is not None:
            plan.store[layer] = (k, v)
        placeholders = 0
        if g.prefix is not None:
            pk, pv = g.prefix[layer]
            n, placeholders = g.stop - g.start, pk.shape[2]
            k = torch.cat([pk.expand(n, -1, -1, -1), k], dim=2)
            v = torch.cat([pv.expand(n, -1, -1, -1), v], dim=2)
            # Causal over [prefix + new] is what the new queries need: each sees the whole
            # prefix and the new keys up to itself. Placeholder queries at the prefix
            # positions make the problem square, so SDPA's causal kernels (which skip the
            # masked half) apply; their outputs are dropped.
            q = torch.cat([q.new_zeros(n, heads, placeholders, head_dim), q], dim=2)
        o = attend(
            q, k, v, attn_mask=g.mask, is_causal=g.mask is None, scale=scaling, **extra
        )
        out[g.start : g.stop, g.offset :] = o[:, :, placeholders:].transpose(1, 2)
    return out, None


AttentionInterface.register(ATTN_IMPLEMENTATION, grouped_attention)
AttentionInterface.register(ATTN_INVARIANT, partial(grouped_attention, invariant=True))
