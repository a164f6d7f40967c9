"""A KV cache whose rows start at different times: the continuous engine's memory.

Each row owns its columns from 0: a row's prompt of length p sits in columns [0, p) at
positions 0..p-1, and its own decode steps write columns p, p+1, ... (position ==
column), whatever step the batch as a whole is at. So a row can join hundreds of steps
after the others, and rows leave by compaction (the live rows are always the first
`rows`, in admission order).

Attention per step: with `per_row` (batch-invariant mode) each row attends over exactly
its own filled columns in a call of its own, shaped as when it is alone, so its numbers
cannot depend on its neighbours' lengths; otherwise one masked call over the longest.
"""

from __future__ import annotations

import torch

from service.models.lm import LeanLM

# With a compiled step, attention runs over the filled columns rounded up to this.
LENGTH_BUCKET = 64


class RaggedCache:
    def __init__(self, lm: LeanLM, per_row: bool = False) -> None:
        self.lm = lm
        self.per_row = per_row
        self.rows = 0  # live rows: [0, rows)
        self.lengths: list[int] = []  # filled columns per live row (host copy: no syncs)
        self.positions = torch.zeros(0, dtype=torch.long, device=lm.device)
        self.kv = torch.zeros(self._shape(0, 0), dtype=lm.dtype, device=lm.device)
        self.mask = torch.zeros(0, 1, 1, 0, dtype=torch.bool, device=lm.device)

    def _shape(self, rows: int, length: int) -> tuple[int, ...]:
        lm = self.lm
        return (lm.num_layers, 2, rows, lm.kv_heads, length, lm.head_dim)

    @property
    def capacity(self) -> tuple[int, int]:
        return self.kv.shape[2], self.kv.shape[4]

    def reserve(self, rows: int, length: int) -> None:
        """Room for `rows` live rows of `length` columns (grows, copying the live rows)."""
        if self.lm.compiled:  # room for the last length bucket
            length = -(-length // LENGTH_BUCKET) * LENGTH_BUCKET
        have_rows, have_length = self.capacity
        if rows <= have_rows and length <= have_length:
            return
        # Doubling rows: joins are frequent; a copy per join would cost a step each time.
        new_rows = max(rows, 2 * have_rows) if rows > have_rows else have_rows
        new_length = max(length, have_length)
        # Zeros, not empty: masked columns still meet V (weight 0); 0 * NaN would poison.
        kv = torch.zeros(self._shape(new_rows, new_length), dtype=self.kv.dtype,
                         device=self.kv.device)
        mask = torch.zeros(new_rows, 1, 1, new_length, dtype=torch.bool, device=self.kv.device)
        kv[:, :, : self.rows, :, :have_length] = self.kv[:, :, : self.rows]
        mask[: self.rows, ..., :have_length] = self.mask[: self.rows]
        self.kv, self.mask = kv, mask

    def add(self, prompt_kv: torch.Tensor, sources: list[int], extra: int) -> None:
        """Append one row per entry of `sources`: row i gets prompt row `sources[i]` of
        `prompt_kv` (layers, 2, prompts, kv_heads, p, D), with room for `extra` steps."""
        p = prompt_kv.shape[4]
        start = self.rows
        self.reserve(start + len(sources), p + extra)
        for i, source in enumerate(sources):
            r = start + i
            self.kv[:, :, r, :, :p] = prompt_kv[:, :, source]
            self.mask[r] = False
            self.mask[r, ..., :p] = True
        self.rows += len(sources)
        self.lengths += [p] * len(sources)
        new = torch.full((len(sources),), p, dtype=torch.long, device=self.kv.device)
        self.positions = torch.cat([self.positions, new])

    def keep(self, index: list[int]) -> None:
        """Keep only the live rows in `index` (ascending), moved to the front."""
        if index == list(range(self.rows)):
            return
        at = torch.tensor(index, dtype=torch.long, device=self.kv.device)
        n = len(index)
        # index_select copies first, so moving rows down over themselves is safe.
        self.kv[:, :, :n] = self.kv[:, :, : self.rows].index_select(2, at)
        self.mask[:n] = self.mask[: self.rows].index_select(0, at)
        self.positions = self.positions.index_select(0, at)
        self.lengths = [self.lengths[i] for i in index]
        self.rows = n

    def step(self, x: torch.Tensor, lo: int = 0, hi: int | None = None) -> torch.Tensor:
        """One decode step of the live rows [lo, hi) (all by default): x (hi - lo, 1, H) is
        each row's next input, written at the row's own next column. Returns the normed
        hidden (hi - lo, H). A failed call (out of memory) may simply be repeated."""
        lm = self.lm
        hi = self.rows if hi is None else hi
        n = hi - lo
        columns = self.positions[lo:hi]
        rope = lm.rope_at(columns[:, None])
        rows = torch.arange(n, device=self.kv.device)
        mask = self.mask[lo:hi]
        mask[rows, 0, 0, columns] = True
        lengths = [length + 1 for length in self.lengths[lo:hi]]
        kv = self.kv[:, :, lo:hi]
        if self.per_row:
            x = self._per_row_layers(x, rope, kv, mask, rows, columns, lengths)
        else:
            end = max(lengths)
            if lm.compiled:
                # A length bucket: the compiled step sees a new cache length only every
                # LENGTH_BUCKET steps (masked columns carry no weight).
                end = min(-(-end // LENGTH_BUCKET) * LENGTH_BUCKET, self.kv.shape[4])
            x = lm.decode_layers(x, rope, kv, mask[..., :end], rows, columns, end)
        self.positions[lo:hi] += 1
        self.lengths[lo:hi] = lengths
        return lm.final_norm(x[:, -1])

    def _per_row_layers(self, x: torch.Tensor, rope: torch.Tensor, kv: torch.Tensor,
                        mask: torch.Tensor, rows: torch.Tensor, columns: torch.Tensor,
                        lengths: list[int]) -> torch.Tensor:
        """The batch-invariant layers: each row attends in a call of its own over exactly
        its filled columns (never compiled: its shapes are the rows' own lengths)."""
        lm = self.lm
        for i, layer in enumerate(lm.layers):
            q, k, v = lm.qkv(x, layer, rope)
            keys, values = kv[i, 0], kv[i, 1]
            keys[rows, :, columns] = k[:, :, 0]
            values[rows, :, columns] = v[:, :, 0]
            attn = torch.cat([
                lm.attend(
                    q[r : r + 1], keys[r : r + 1, :, :length], values[r : r + 1, :, :length],
                    attn_mask=mask[r : r + 1, ..., :length], scale=lm.scaling,
                    enable_gqa=lm.gqa,
                )
                for r, length in enumerate(lengths)
            ])
            x = lm.finish_layer(x, attn, layer)
        return x
