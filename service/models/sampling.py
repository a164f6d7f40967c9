"""Per-job sampling inside a batch: each job draws from its own generator into its own rows."""

from __future__ import annotations

from typing import Any

import torch


def sample(
    scores: torch.Tensor,
    spans: list[tuple[int, int, int]],
    generators: list[torch.Generator | None],
    uniform: torch.Tensor,
    greedy: torch.Tensor | None,
) -> torch.Tensor:
    """One token per row: inverse-CDF sampling from softmax(scores), argmax for greedy jobs.

    Each job draws one uniform number per row from its own generator into its own rows, so
    its random stream is the same alone or batched. (torch.multinomial's exponential-noise
    trick would draw a full vocabulary of numbers per row per step: ~0.4 ms per image per
    step on a CPU core, more than the model step of a small model.)
    """
    for k, start, end in spans:
        generator = generators[k]
        if generator is not None:
            uniform[start:end].uniform_(generator=generator)
    cdf = torch.softmax(scores, dim=-1).cumsum_(dim=-1)
    # Scaled by each row's total so rounding in the sum can never push past the last token;
    # right=True never lands on a zero-probability token.
    token = torch.searchsorted(cdf, uniform * cdf[:, -1:], right=True).squeeze(-1)
    token = token.clamp_(max=scores.shape[-1] - 1)
    if greedy is not None:  # rows of greedy jobs, when there are any
        token = torch.where(greedy, scores.argmax(dim=-1), token)
    return token


def multinomial(
    scores: torch.Tensor, spans: list[tuple[int, int, int]], generators: list[Any]
) -> torch.Tensor:
    """One token per row as transformers' `generate` samples it: softmax, then
    `torch.multinomial` of that row alone from its job's generator (greedy jobs, with no
    generator: the argmax). A job seeded s draws exactly what `torch.manual_seed(s)` then
    `generate` draws, as DeepSeek's JanusFlow demo samples, alone or batched. The price
    is a vocabulary of random numbers per sampled row per step (see `sample`), which a
    text row can afford."""
    token = scores.argmax(dim=-1)
    probs = None
    for k, start, end in spans:
        generator = generators[k]
        if generator is None:
            continue
        if probs is None:
            probs = torch.softmax(scores, dim=-1)
        for r in range(start, end):
            token[r] = torch.multinomial(probs[r : r + 1], 1, generator=generator)[0, 0]
    return token


def top_p_filter(scores: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    # Nucleus filtering per row: drop the least likely tokens whose cumulative probability
    # stays within 1 - top_p; the most likely token always survives.
    ordered, order = torch.sort(scores, descending=False, dim=-1)
    cumulative = ordered.softmax(dim=-1).cumsum(dim=-1)
    remove = cumulative <= (1 - top_p)
    remove[:, -1] = False
    return scores.masked_fill(remove.scatter(1, order, remove), float("-inf"))


def top_k_filter(scores: torch.Tensor, top_k: torch.Tensor) -> torch.Tensor:
    """Keep each row's `top_k` highest scores (ties with the k-th included), as transformers'
    TopKLogitsWarper does; a row whose k is 0 keeps everything. `top_k`: (rows, 1) long."""
    k = top_k.clamp(max=scores.shape[-1])
    largest = int(k.max())
    if largest == 0:
        return scores
    kth = torch.topk(scores, largest, dim=-1).values.gather(1, (k - 1).clamp(min=0))
    kth = torch.where(k > 0, kth, torch.full_like(kth, float("-inf")))
    return scores.masked_fill(scores < kth, float("-inf"))
