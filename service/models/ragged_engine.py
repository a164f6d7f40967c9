"""Engines over a `RaggedCache`: rows, hidden states, compaction and the shape of a step.

Shared by the Janus/Janus-Pro image engine (`janus_pro.engine`) and the understanding
engine of every family (`text_engine`). The rows live in a `RaggedCache` (each row owns
its columns from 0), one block of rows per job in admission order, with the last hidden
state of every row. A step samples one token for every job (`_sample`, each job from its
own generator), lets the jobs that are done leave (compaction), then runs one decode step
over the rows that remain. A job admitted between steps is prefilled on its own (its
prompt unpadded, as when alone) and its rows are appended.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch

from service.models.base import OutOfMemory
from service.models.engine import EngineBase, Finished, Key
from service.models.lm import LeanLM
from service.models.ragged import RaggedCache


@dataclass
class Row:
    job: Any  # ImageJob | TextJob
    rows: int  # cache rows
    generator: torch.Generator | None
    started: float
    done: int = 0  # tokens sampled
    out: list[int] = field(default_factory=list)  # text: the answer's ids so far
    # Text: the answer decoded so far, incrementally (`text_engine.detokenize`): out[:read]
    # is in `text`; decoding restarts at out[prefix:] so a token's text keeps its context.
    text: str = ""
    prefix: int = 0
    read: int = 0
    tokens: torch.Tensor | None = None  # images: (n, steps)
    preview: bool = False  # the job asked for previews
    shown: int = 0  # images: tokens done at its last preview


class RaggedEngine(EngineBase):
    """A family's engine supplies `_layout` (per-step index tensors, which must set
    `spans`: (job, first, end) of each job's sampled rows), `_sample`, `_inputs` and
    `_result`; admission is `EngineBase.admit` with the engine's `_prepare`/`_start`."""

    spans: list[tuple[int, int, int]]

    def __init__(self, lm: LeanLM, task: str, slots: int, per_row: bool) -> None:
        super().__init__(task, slots)
        self.lm = lm
        self.cache = RaggedCache(lm, per_row=per_row)
        self.jobs: dict[Key, Row] = {}  # admission order == cache order
        self.hidden = torch.empty(0, lm.hidden, dtype=lm.dtype, device=lm.device)
        self.steps_run = 0
        self.stepping = 0
        self._layout_stale = True

    def _rows(self) -> dict[Key, Any]:
        return self.jobs

    def _generator(self, job: Any) -> torch.Generator | None:
        if job.temperature <= 0:
            return None
        return torch.Generator(device=self.lm.device).manual_seed(job.seed)

    def _append(self, embeds: torch.Tensor, sources: list[int], extra: int) -> None:
        """Prefill one job's distinct prompts (rows of `embeds`) and append its cache rows."""
        last, kv = self.lm.prefill(embeds.to(self.lm.dtype))
        self.cache.add(kv, sources, extra)
        self.hidden = torch.cat([self.hidden, last[sources]])
        self._layout_stale = True

    def _blocks(self) -> list[tuple[Key, Row, int, int]]:
        out, start = [], 0
        for key, live in self.jobs.items():
            out.append((key, live, start, start + live.rows))
            start += live.rows
        return out

    @torch.inference_mode()
    def drop(self, key: Key) -> bool:
        if key not in self.jobs:
            return False
        self._leave({key})
        return True

    def _leave(self, keys: set[Key]) -> None:
        keep = [r for k, _, a, b in self._blocks() if k not in keys for r in range(a, b)]
        for key in keys:
            self.jobs.pop(key, None)
        self.cache.keep(keep)
        self.hidden = self.hidden[keep] if keep else self.hidden[:0]
        self._layout_stale = True

    # -- a step -----------------------------------------------------------------------

    def _layout(self) -> None:
        raise NotImplementedError

    def _sample(self) -> tuple[torch.Tensor, set[Key]]:
        """One token per sampled row (recorded in the jobs), and the jobs now done."""
        raise NotImplementedError

    def _inputs(self, token: torch.Tensor) -> torch.Tensor:
        """The next decode step's input of every cache row, from the tokens of the rows
        that stay."""
        raise NotImplementedError

    def _result(self, live: Row, step_seconds: float) -> Any:
        raise NotImplementedError

    @torch.inference_mode()
    def step(self) -> Finished:
        if not self.jobs:
            return []
        if self._layout_stale:
            self._layout()
        started = time.monotonic()
        self.stepping = len(self.jobs)  # the jobs of this step, those that leave in it too
        token, finished = self._sample()
        done = {k: live for k, live in self.jobs.items() if k in finished}
        if finished:
            keep = [i for (_, a, b), key in zip(self.spans, self.jobs, strict=True)
                    if key not in finished for i in range(a, b)]
            token = token[keep]
            self._leave(finished)
            self._layout()
        out: Finished = []
        if self.jobs:
            out += self._forward(self._inputs(token))
        step_seconds = time.monotonic() - started
        self.steps_run += 1
        for key, live in done.items():
            out.append((key, self._result(live, step_seconds)))
        return out

    def _forward(self, x: torch.Tensor) -> Finished:
        """The decode step over every live row (x: each row's input); out of memory retries
        each job's rows alone, and a job that cannot step alone fails."""
        try:
            self.hidden = self.cache.step(x)
            return []
        except torch.OutOfMemoryError:
            pass
        if self.lm.device.type == "cuda":
            torch.cuda.empty_cache()
        failed: Finished = []
        hidden = []
        for key, _, a, b in self._blocks():
            try:
                hidden.append(self.cache.step(x[a:b], a, b))
            except torch.OutOfMemoryError:
                failed.append((key, OutOfMemory("out of memory in a decode step, alone")))
                hidden.append(self.hidden[a:b])
        self.hidden = torch.cat(hidden)
        self._leave({k for k, _ in failed})
        return failed
