"""A Llama decoder stack run directly from its weights: the LLM of Janus/Janus-Pro (image
and text decode) and of JanusFlow (text decode), under the engines' `ragged.RaggedCache`.

transformers' image `generate` spends most of a small model's decode step in Python (mask
building, cache bookkeeping, logits processors, output dataclasses): ~13 ms per step on the
benchmark's 3M-parameter LLM against ~3 ms here for the same job. Here a decode step is a
flat list of tensor ops on weights taken once from the loaded modules: fused q/k/v and
gate/up projections (the modules' parameters become views into the fused tensors, so memory
is not doubled) and RoPE from a precomputed table. A step's layers are `qkv` then
`finish_layer` around the cache's attention (`ragged.RaggedCache.step`).
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

    def __init__(self, lm: Any, batch_invariant: bool = False) -> None:
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
        self.compiled = False
        self.pieces: tuple[Any, Any] = (self.qkv, self.attend_finish)  # `compile` swaps them

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
        tensors = (
            layer.input_layernorm.weight, wqkv, bqkv, attn.o_proj.weight, attn.o_proj.bias,
            layer.post_attention_layernorm.weight, wgu, bgu, mlp.down_proj.weight,
            mlp.down_proj.bias,
        )  # fmt: skip
        # Plain tensors on the same memory, not Parameters: a compiled step guards on a
        # Parameter's identity, which would make a graph per layer.
        return _Layer(*(None if t is None else t.detach() for t in tensors))

    # -- building blocks ---------------------------------------------------------------

    def rope_at(self, positions: torch.Tensor) -> torch.Tensor:
        """(rows, T) positions -> (rows, T, 2, 1, D) cos / folded sin, broadcastable over heads."""
        return self.rope[positions].unsqueeze(-2)

    def compile(self) -> None:
        """Compile the decode step's layer math (`qkv`, `attend_finish`; `compiling`)."""
        from service.models.compiling import dynamic

        self.pieces = (dynamic(self.qkv), dynamic(self.attend_finish))
        self.compiled = True

    def attend_finish(self, x: torch.Tensor, q: torch.Tensor, keys: torch.Tensor,
                      values: torch.Tensor, mask: torch.Tensor, layer: _Layer) -> torch.Tensor:
        """One masked attention call, then the rest of the layer."""
        attn = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask,
                                              scale=self.scaling, enable_gqa=self.gqa)
        return self.finish_layer(x, attn, layer)

    def decode_layers(self, x: torch.Tensor, rope: torch.Tensor, kv: torch.Tensor,
                      mask: torch.Tensor, rows: torch.Tensor, columns: torch.Tensor,
                      end: int, eager: bool = False) -> torch.Tensor:
        """Every layer of one decode step: x (n, 1, H), row r's keys and values written at
        cache column `columns[r]` of `kv` (layers, 2, n, kv_heads, length, D), and one
        masked attention call over the first `end` columns (`mask`: (n, 1, 1, end)).
        Compiled pieces unless `eager`."""
        qkv, attend_finish = (self.qkv, self.attend_finish) if eager else self.pieces
        for i, layer in enumerate(self.layers):
            q, k, v = qkv(x, layer, rope)
            keys, values = kv[i, 0], kv[i, 1]
            keys[rows, :, columns] = k[:, :, 0]
            values[rows, :, columns] = v[:, :, 0]
            x = attend_finish(x, q, keys[:, :, :end], values[:, :, :end], mask, layer)
        return x

    def final_norm(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (self.hidden,), self.norm_weight, self.eps)

    def qkv(
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

    def finish_layer(self, x: torch.Tensor, attn: torch.Tensor, layer: _Layer) -> torch.Tensor:
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
            q, k, v = self.qkv(x, layer, rope)
            kv[i, 0].copy_(k)
            kv[i, 1].copy_(v)
            attn = self.attend(
                q, k, v, is_causal=True, scale=self.scaling, enable_gqa=self.gqa
            )
            x = self.finish_layer(x, attn, layer)
        return self.final_norm(x[:, -1]), kv
