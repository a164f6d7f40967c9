"""Understanding, continuous, for every family: text rows join between steps and leave at
end-of-sentence or at their token budget, whichever comes first, at any step.

One row per job in the engine's `RaggedCache` (`ragged_engine.RaggedEngine`). A family
supplies `_jobs`: the requests admitted together -> their `TextJob`s (prompt embeddings
with the image features in place), its image tower run once for all of them; and may
check each request on its own first (`_prepare`). A step samples every row (temperature,
top-k, top-p per row, in transformers' order, each job from its own generator) with the
family's draw (`multinomial` or not), lets finished rows leave, then decodes the rest.
The text so far of each row (`texts`) is detokenized incrementally (`detokenize`); a
result decodes its whole answer once, at the end.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch

from service.models.base import UnderstandRequest, UnderstandResult
from service.models.engine import Key
from service.models.lm import LeanLM
from service.models.ragged_engine import RaggedEngine, Row
from service.models.sampling import multinomial, sample, top_k_filter, top_p_filter

_REPLACEMENT = "\ufffd"  # what a decoder gives for the bytes of an unfinished character


@dataclass
class TextJob:
    embeds: torch.Tensor  # (p, hidden) prompt embeddings with image features in place
    max_new_tokens: int
    seed: int
    temperature: float  # 0: greedy
    top_p: float
    top_k: int  # 0: no top-k filter
    ids: list[int]  # the prompt's token ids, image tokens expanded


def text_usage(job: TextJob, answer_tokens: int) -> dict[str, Any]:
    """An understanding result's exact usage. The decoders keep the answer's tokens
    without the end-of-sentence token; an answer shorter than its budget ended on one,
    which the model sampled too (a canceled job has no result)."""
    stopped = answer_tokens < job.max_new_tokens
    return {"prompt_tokens": int(job.embeds.shape[0]),
            "completion_tokens": answer_tokens + int(stopped),
            "finish_reason": "stop" if stopped else "length"}


def detokenize(tokenizer: Any, live: Row) -> str:
    """`live.text` brought up to `live.out` and returned (not stripped), as TGI and vLLM
    detokenize: decoding the whole answer after every step is quadratic in its length.

    Only the tokens since `live.prefix` are decoded, with and without those after
    `live.read`; the difference is the new text. The tokens before `read` give context
    (a tokenizer may drop a piece's leading space when it comes first). A difference that
    ends in U+FFFD is part of a character whose bytes have not all come yet: it waits."""
    if live.read == len(live.out):
        return live.text
    window = live.out[live.prefix:]
    before = tokenizer.decode(window[:live.read - live.prefix], skip_special_tokens=True)
    after = tokenizer.decode(window, skip_special_tokens=True)
    if len(after) <= len(before) or after.endswith(_REPLACEMENT):
        return live.text
    if after.startswith(before):
        live.text += after[len(before):]
    else:
        # Invalid UTF-8: a byte-fallback decoder turns a whole run of byte pieces into
        # U+FFFD, ones it had decoded into characters included. Rare: decode it all once.
        live.text = tokenizer.decode(live.out, skip_special_tokens=True)
    live.prefix, live.read = live.read, len(live.out)
    return live.text


class TextEngine(RaggedEngine):
    request_type = UnderstandRequest

    def __init__(self, lm: LeanLM, slots: int, *, head: Any, eos: int, tokenizer: Any,
                 per_row: bool, multinomial: bool = False) -> None:
        super().__init__(lm, "understand", slots, per_row)
        self.head = head  # hidden -> vocabulary logits
        self.eos = eos
        self.tokenizer = tokenizer
        # True: draw as `torch.multinomial` does (`sampling.multinomial`: the random stream
        # of DeepSeek's demo under the same seed); False: `sampling.sample`.
        self.multinomial = multinomial

    def _jobs(self, ready: list[Any]) -> list[TextJob | Exception]:
        """The family's: these prepared requests -> their jobs (a bad one: its error)."""
        raise NotImplementedError

    def _start(self, ready: list[Any]) -> list[Any]:
        try:
            jobs = self._jobs(ready)
        except Exception as e:  # the tower failed for the group: each job fails alone
            jobs = [e] * len(ready)
        rows: list[Any] = []
        for job in jobs:
            try:
                if isinstance(job, Exception):
                    raise job
                live = Row(job, 1, self._generator(job), time.monotonic())
                self._append(job.embeds[None], [0], job.max_new_tokens - 1)
                rows.append(live)
            except Exception as e:
                rows.append(e)
        return rows

    def progress(self) -> dict[Key, tuple[int, int]]:
        # An answer may end at any step (end of sentence): the budget is only an upper bound.
        return {
            k: (min(live.done, live.job.max_new_tokens - 1), live.job.max_new_tokens)
            for k, live in self.jobs.items()
        }

    def texts(self) -> dict[Key, str]:
        return {k: detokenize(self.tokenizer, live).strip() for k, live in self.jobs.items()}

    def _text(self, live: Row) -> str:
        # The answer is decoded whole once, at the end, whatever the incremental text held
        # back or decoded differently.
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

    def _sample(self) -> tuple[torch.Tensor, set[Key]]:
        # transformers' order, which the reference samples under: temperature, top-k, top-p.
        scores = self.head(self.hidden).float() / self.temperature
        if self.use_top_k:
            scores = top_k_filter(scores, self.top_k)
        if self.use_top_p:
            scores = top_p_filter(scores, self.top_p)
        if self.multinomial:
            token = multinomial(scores, self.spans, self.generators)
        else:
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
        return token, finished

    def _inputs(self, token: torch.Tensor) -> torch.Tensor:
        return self.lm.embed_tokens(token[:, None])

    def _result(self, live: Row, step_seconds: float) -> UnderstandResult:
        return UnderstandResult(text=self._text(live), stats={
            "prompt_tokens": int(live.job.embeds.shape[0]), "new_tokens": len(live.out),
            "batch_jobs": self.stepping, "step_seconds": step_seconds,
            "seconds": round(time.monotonic() - live.started, 3)},
            **text_usage(live.job, len(live.out)))
