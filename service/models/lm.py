"""A Llama decoder stack run directly from its weights, with our own static KV cache: the
LLM of Janus/Janus-Pro (image and text decode) and of JanusFlow (text decode).

transformers' image `generate` spends most of a small model's decode step in Python (mask
building, cache bookkeeping, logits processors, output dataclasses): ~13 ms per step on the
benchmark's 3M-parameter LLM against ~3 ms here for the same job. Here a decode step is a
flat list of tensor ops on weights taken once from the loaded modules: fused q/k/v and
gate/up projections (the modules' parameters become views into the fused tensors, so memory
is not doubled), RoPE from a precomputed table, and a preallocated cache that rows can be
dropped from.

Layout of a batch: rows are left-padded. Row r's prompt of length p_r sits in cache columns
[P - p_r, P) with positions 0..p_r-1, where P is the longest prompt; decode step s writes
column P + s at position p_r + s. `KVCache.mask` marks the columns a row may attend to.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from service.models.invariance import (
    in_serial_chunks,
    invariant_attention,
    invariant_linear,
    per_row,
)


class KVCache:
    """Keys/values of every layer for `rows` rows and `length` columns, plus the attention mask."""

    def __init__(
        self,
        layers: int,
        rows: int,
        kv_heads: int,
        length: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        # Zeros, not empty: masked columns still meet V in the attention matmul (weight 0),
        # and 0 * NaN from uninitialised memory would poison the row.
        self.kv = torch.zeros(
            layers, 2, rows, kv_heads, length, head_dim, dtype=dtype, device=device
        )
        self.mask = torch.zeros(rows, 1, 1, length, dtype=torch.bool, device=device)

    def keep(self, index: torch.Tensor) -> None:
        """Keep only the rows in `index` (a device tensor), in that order."""
        self.kv = self.kv.index_select(2, index)
        self.mask = self.mask.index_select(0, index)


class _Layer(NamedTuple):
    """One decoder layer's tensors, q/k/v and gate/up fused."""

    ln1: torch.Tensor
    wqkv: torch.Tensor
    bqkv: torch.Tensor | None
    wo: torch.Tensor
    bo: torch.Tensor | None
    ln2: torch.Tensor
    wgu: torch.Tensor
    bgu: torch.Tensor | None
    wdown: torch.Tensor
    bdown: torch.Tensor | None


class LeanLM:
    """Prefill and decode-step functions over the decoder layers of a loaded Janus model."""

    def __init__(
        self,
        lm: Any,
        compile_step: bool = False,
        static: bool | None = None,
        batch_invariant: bool = False,
    ) -> None:
        # lm: the decoder stack (embed_tokens, layers, norm, rotary_emb), e.g. a LlamaModel.
        # One product per row when a row's numbers must not depend on the batch (invariance).
        self.linear = invariant_linear if batch_invariant else F.linear
        self.device = lm.embed_tokens.weight.device
        # SDPA's CPU kernel splits one query's keys between threads (every decode step).
        self.attend = (invariant_attention if batch_invariant and self.device.type == "cpu"
                       else F.scaled_dot_product_attention)
        cfg = lm.config
        self.dtype = lm.embed_tokens.weight.dtype
        self.hidden = cfg.hidden_size
        self.heads = cfg.num_attention_heads
        self.kv_heads = cfg.num_key_value_heads or self.heads
        self.head_dim = getattr(cfg, "head_dim", None) or self.hidden // self.heads
        self.scaling = self.head_dim**-0.5
        self.max_positions = cfg.max_position_embeddings
        self.gqa = self.kv_heads != self.heads
        self.eps = cfg.rms_norm_eps
        self.num_layers = len(lm.layers)
        self.embed_tokens = lm.embed_tokens
        self.norm_weight = lm.norm.weight
        act = lm.layers[0].mlp.act_fn
        # The module wrapper costs a Python call per layer per step; SiLU is the Llama default.
        self.act = F.silu if cfg.hidden_act == "silu" else act
        if batch_invariant:
            self.act = per_row(in_serial_chunks(self.act))
        self.layers = [self._fuse(layer) for layer in lm.layers]
        # cos and sign-folded sin per position, computed once by the model's own rotary
        # module (its rope type and scaling apply; length-dependent variants would not).
        # sin's first half is negated so that rotate_half(x) * sin equals
        # swap_halves(x) * folded_sin: one op instead of four.
        with torch.no_grad():
            positions = torch.arange(self.max_positions, device=self.device)[None]
            probe = torch.zeros(1, dtype=self.dtype, device=self.device)
            cos, sin = lm.rotary_emb(probe, position_ids=positions)
            half = self.head_dim // 2
            sin = torch.cat([-sin[0, :, :half], sin[0, :, half:]], dim=-1)
            self.rope = torch.stack([cos[0], sin], dim=1).contiguous()  # (positions, 2, D)
        # The static step has the same shapes at every step (full cache length, column as a
        # tensor), which is what a compiled graph needs; eager CPU runs skip unfilled columns.
        self.static = compile_step if static is None else static
        self._step = self._step_static
        if compile_step:
            # Dynamic shapes: the row count changes when a job leaves the batch and the cache
            # length with the longest prompt; neither should force a recompile per batch.
            self._step = torch.compile(self._step_static, dynamic=True)
        self._columns = torch.arange(self.max_positions, device=self.device)

    # -- weights -----------------------------------------------------------------------

    @staticmethod
    @torch.no_grad()
    def _fuse(layer: nn.Module) -> _Layer:
        attn, mlp = layer.self_attn, layer.mlp

        def fuse(mods: list[nn.Linear]) -> tuple[torch.Tensor, torch.Tensor | None]:
            weight = torch.cat([m.weight for m in mods])
            bias = None if mods[0].bias is None else torch.cat([m.bias for m in mods])
            start = 0
            for m in mods:  # rebind as views: transformers' own forward still works, no copy
                n = m.weight.shape[0]
                m.weight = nn.Parameter(weight[start : start + n], requires_grad=False)
                if bias is not None:
                    m.bias = nn.Parameter(bias[start : start + n], requires_grad=False)
                start += n
            return weight, bias

        wqkv, bqkv = fuse([attn.q_proj, attn.k_proj, attn.v_proj])
        wgu, bgu = fuse([mlp.gate_proj, mlp.up_proj])
        return _Layer(
            layer.input_layernorm.weight, wqkv, bqkv, attn.o_proj.weight, attn.o_proj.bias,
            layer.post_attention_layernorm.weight, wgu, bgu, mlp.down_proj.weight,
            mlp.down_proj.bias,
        )  # fmt: skip

    # -- building blocks ---------------------------------------------------------------

    def rope_at(self, positions: torch.Tensor) -> torch.Tensor:
        """(rows, T) positions -> (rows, T, 2, 1, D) cos / folded sin, broadcastable over heads."""
        return self.rope[positions].unsqueeze(-2)

    def new_cache(self, rows: int, length: int) -> KVCache:
        return KVCache(
            self.num_layers, rows, self.kv_heads, length, self.head_dim, self.dtype, self.device
        )

    def final_norm(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (self.hidden,), self.norm_weight, self.eps)

    def _qkv(
        self, x: torch.Tensor, layer: _Layer, rope: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        rows, t = x.shape[0], x.shape[1]
        h = F.rms_norm(x, (self.hidden,), layer.ln1, self.eps)
        qkv = self.linear(h, layer.wqkv, layer.bqkv)
        qkv = qkv.view(rows, t, self.heads + 2 * self.kv_heads, self.head_dim)
        split = self.heads + self.kv_heads
        qk = qkv[:, :, :split]
        # q and k rotated together: x * cos + swap_halves(x) * folded_sin.
        swapped = qk.unflatten(-1, (2, self.head_dim // 2)).flip(-2).flatten(-2)
        qk = qk * rope[:, :, 0] + swapped * rope[:, :, 1]
        q = qk[:, :, : self.heads].transpose(1, 2)
        k = qk[:, :, self.heads :].transpose(1, 2)
        v = qkv[:, :, split:].transpose(1, 2)
        return q, k, v

    def _finish_layer(self, x: torch.Tensor, attn: torch.Tensor, layer: _Layer) -> torch.Tensor:
        rows, t = x.shape[0], x.shape[1]
        attn = attn.transpose(1, 2).reshape(rows, t, self.heads * self.head_dim)
        x = x + self.linear(attn, layer.wo, layer.bo)
        gu = self.linear(F.rms_norm(x, (self.hidden,), layer.ln2, self.eps), layer.wgu, layer.bgu)
        inter = gu.shape[-1] // 2
        gated = self.act(gu[..., :inter]) * gu[..., inter:]
        return x + self.linear(gated, layer.wdown, layer.bdown)

    # -- prefill and decode ------------------------------------------------------------

    def prefill(self, embeds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Run unpadded prompts (rows, T, H) that all start at position 0.

        Returns the normed last hidden state (rows, H) and the keys/values
        (layers, 2, rows, kv_heads, T, D) for the caller to place in a batch cache.
        """
        rows, t = embeds.shape[0], embeds.shape[1]
        rope = self.rope_at(torch.arange(t, device=self.device)[None].expand(rows, t))
        kv = torch.empty(
            self.num_layers,
            2,
            rows,
            self.kv_heads,
            t,
            self.head_dim,
            dtype=self.dtype,
            device=self.device,
        )
        x = embeds
        for i, layer in enumerate(self.layers):
            q, k, v = self._qkv(x, layer, rope)
            kv[i, 0].copy_(k)
            kv[i, 1].copy_(v)
            attn = self.attend(
                q, k, v, is_causal=True, scale=self.scaling, enable_gqa=self.gqa
            )
            x = self._finish_layer(x, attn, layer)
        return self.final_norm(x[:, -1]), kv

    def step(
        self, x: torch.Tensor, rope: torch.Tensor, cache: KVCache, column: int
    ) -> torch.Tensor:
        """One decode step: x (rows, 1, H) at cache `column`; returns the normed hidden (rows, H).

        The caller has already set `cache.mask[..., column]` for every row.
        """
        if self.static:
            # A slice of a device arange: building the index from a Python int would be a
            # blocking host-to-device copy every step.
            col = self._columns[column : column + 1]
            return self._step(x, rope, cache.kv, cache.mask, col)
        # Eager: attend over the filled columns only, which on a CPU is most of the saving.
        end = column + 1
        mask = cache.mask[..., :end]
        for i, layer in enumerate(self.layers):
            q, k, v = self._qkv(x, layer, rope)
            keys, values = cache.kv[i, 0], cache.kv[i, 1]
            keys[:, :, column:end].copy_(k)
            values[:, :, column:end].copy_(v)
            attn = self.attend(
                q,
                keys[:, :, :end],
                values[:, :, :end],
                attn_mask=mask,
                scale=self.scaling,
                enable_gqa=self.gqa,
            )
            x = self._finish_layer(x, attn, layer)
        return self.final_norm(x[:, -1])

    def _step_static(
        self,
        x: torch.Tensor,
        rope: torch.Tensor,
        kv: torch.Tensor,
        mask: torch.Tensor,
        col: torch.Tensor,
    ) -> torch.Tensor:
        # Shapes independent of the step (full cache length, column as a tensor), so a
        # compiled graph is reused for all 576 steps.
        for i, layer in enumerate(self.layers):
            q, k, v = self._qkv(x, layer, rope)
            kv[i, 0].index_copy_(2, col, k)
            kv[i, 1].index_copy_(2, col, v)
            attn = self.attend(
                q, kv[i, 0], kv[i, 1], attn_mask=mask, scale=self.scaling, enable_gqa=self.gqa
            )
            x = self._finish_layer(x, attn, layer)
        return self.final_norm(x[:, -1])
