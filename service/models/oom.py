"""Out-of-memory on a batch splits the batch; only a job that cannot fit alone fails."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TypeVar

import torch

from service.models.base import OutOfMemory

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


def _release_memory() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def run_split_on_oom(
    fn: Callable[[list[T]], Sequence[R]], batch: Sequence[T]
) -> list[R | OutOfMemory]:
    """`fn(batch)`, one result per item; on `torch.OutOfMemoryError` retry each half.

    `fn` must return exactly one result per item, in order. Items keep whatever identity
    they carry (e.g. their index in the caller's batch), so halves report to the right job.
    """
    items = list(batch)
    if not items:
        return []
    message = ""
    try:
        results = list(fn(items))
    except torch.OutOfMemoryError as e:
        # Leave the except block before freeing: until then the traceback holds the failed
        # call's frames, and with them every tensor it had allocated.
        message = str(e).splitlines()[0] if str(e) else "out of memory"
    else:
        if len(results) != len(items):
            raise RuntimeError(f"{fn!r} returned {len(results)} results for {len(items)} items")
        return results
    _release_memory()
    if len(items) == 1:
        return [OutOfMemory(f"out of memory even alone: {message}")]
    half = len(items) // 2
    log.warning(
        "out of memory on a batch of %d; retrying as %d + %d", len(items), half, len(items) - half
    )
    return run_split_on_oom(fn, items[:half]) + run_split_on_oom(fn, items[half:])
