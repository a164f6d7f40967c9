"""Janus / Janus-Pro understanding, continuous: text rows join between steps and leave at
end-of-sentence or at their token budget, whichever comes first, at any step.

One row per job in the shared `RaggedCache` (`engine._Ragged`). The jobs admitted together
share one pass of the image tower (`JobBuilder.text_jobs`). A step samples every row
(temperature, top-k, top-p per row, each job from its own generator, as the static
`JanusDecoder.text_tokens` does), lets finished rows leave, then decodes the rest.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import torch

from service.models.base import ModelError, UnderstandRequest, UnderstandResult
from service.models.engine import Finished, Key, failure
from service.models.janus_pro.engine import _Job, _Ragged
from service.models.janus_pro.jobs import text_usage
from service.models.janus_pro.sampling import sample, top_k_filter, top_p_filter

if TYPE_CHECKING:
    from service.models.janus_pro.runner import JanusProRunner


class TextEngine(_Ragged):
    def __init__(self, runner: JanusProRunner, slots: int) -> None:
        super().__init__(runner, "understand", slots)
        self.eos = self.decoder.eos_token_id
        self.tokenizer = runner.processor.tokenizer

    @torch.inference_mode()
    def admit(self, items: list[tuple[Key, Any]]) -> list[tuple[Key, ModelError]]:
        taken, refused = self._room(items)
        room = self.free_slots()
        fits = [(k, r) for k, r in taken if isinstance(r, UnderstandRequest)][:room]
        fitting = {k for k, _ in fits}
        for key, request in taken:
            if not isinstance(request, UnderstandRequest):
                refused.append((key, ModelError(f"not an understanding request: "
                                                f"{type(request).__name__}")))
            elif key not in fitting:
                refused.append((key, ModelError("no free slot in the engine")))
        # The jobs admitted together share one pass of the image tower.
        try:
            jobs = self.runner.jobs.text_jobs(  # type: ignore[union-attr]
                [(0, r) for _, r in fits], self.runner.defaults()["understand"])
        except Exception as e:  # the tower failed for the group: each job fails alone
            jobs = [e] * len(fits)
        for (key, _), job in zip(fits, jobs, strict=True):
            try:
                if isinstance(job, Exception):
                    raise job
                live = _Job(job, 1, self._generator(job), time.monotonic())
                self._append(job.embeds[None], [0], job.max_new_tokens - 1)
            except Exception as e:
                refused.append((key, failure(e)))
                continue
            self.jobs[key] = live
        return refused

    def progress(self) -> dict[Key, tuple[int, int]]:
        # An answer may end at any step (end of sentence): the budget is only an upper bound.
        return {
            k: (min(live.done, live.job.max_new_tokens - 1), live.job.max_new_tokens)
            for k, live in self.jobs.items()
        }

    def texts(self) -> dict[Key, str]:
        return {k: self._text(live) for k, live in self.jobs.items()}

    def _text(self, live: _Job) -> str:
        return self.tokenizer.decode(live.out, skip_special_tokens=True).strip()

    def _layout(self) -> None:
        jobs = [live.job for live in self.jobs.values()]
        device = self.lm.device

        def col(values: list, dtype: torch.dtype) -> torch.Tensor:
            return torch.tensor(values, dtype=dtype, device=device)[:, None]

        # Greedy rows (temperature 0) divide by 1 and filter nothing; they take the argmax.
        sampled = [j for j in jobs if j.temperature > 0]
        self.temperature = col([j.temperature if j.temperature > 0 else 1.0 for j in jobs],
                               torch.float32)
        self.top_p = col([j.top_p if j.temperature > 0 else 1.0 for j in jobs], torch.float32)
        self.top_k = col([j.top_k if j.temperature > 0 else 0 for j in jobs], torch.long)
        self.use_top_p = any(j.top_p < 1.0 for j in sampled)
        self.use_top_k = any(j.top_k > 0 for j in sampled)
        greedy = [j.temperature <= 0 for j in jobs]
        self.greedy = col(greedy, torch.bool)[:, 0] if any(greedy) else None
        self.spans = [(k, k, k + 1) for k in range(len(jobs))]
        self.generators = [live.generator for live in self.jobs.values()]
        self.uniform = torch.zeros(len(jobs), 1, dtype=torch.float32, device=device)
        self._layout_stale = False

    @torch.inference_mode()
    def step(self) -> Finished:
        if not self.jobs:
            return []
        if self._layout_stale:
            self._layout()
        started = time.monotonic()
        # transformers' order, which the reference samples under: temperature, top-k, top-p.
        scores = self.runner.model.lm_head(self.hidden).float() / self.temperature
        if self.use_top_k:
            scores = top_k_filter(scores, self.top_k)
        if self.use_top_p:
            scores = top_p_filter(scores, self.top_p)
        token = sample(scores, self.spans, self.generators, self.uniform, self.greedy)
        finished: set[Key] = set()
        for (key, live), t in zip(self.jobs.items(), token.tolist(), strict=True):
            live.done += 1
            if t == self.eos:
                finished.add(key)
                continue
            live.out.append(t)
            if len(live.out) >= live.job.max_new_tokens:
                finished.add(key)
        done = {k: self.jobs[k] for k in finished}
        if finished:
            keep = [i for i, key in enumerate(self.jobs) if key not in finished]
            token = token[keep]
            self._leave(finished)
            self._layout()
        out: Finished = []
        if self.jobs:
            out += self._forward(self.lm.embed_tokens(token[:, None]))
        self.steps_run += 1
        seconds = time.monotonic() - started
        for key, live in done.items():
            out.append((key, UnderstandResult(text=self._text(live), stats={
                "prompt_tokens": int(live.job.embeds.shape[0]), "new_tokens": len(live.out),
                "batch_jobs": len(self.jobs) + 1, "step_seconds": seconds,
                "seconds": round(time.monotonic() - live.started, 3)},
                **text_usage(live.job, len(live.out)))))
        return out
