"""Previews of a picture forming: small images an engine hands out between steps.

A preview is a read-only look at a row: it never draws from a job's generator and never
changes the tensors its next step reads, so a job's output is the same with previews on
or off (tests/test_previews.py). Janus-Pro decodes the image tokens produced so far;
JanusFlow decodes its current estimate of the clean latent. Both engines hand out at most
one preview per row every `every` steps (Janus-Pro counts image tokens; JanusFlow, with
far fewer steps, is given the same number of previews per job, see `flow_every`).
"""

from __future__ import annotations

from PIL import Image

# Previews are thumbnails: an event carries one inline, so it must stay a few KiB.
PREVIEW_PIXELS = 128

# The Janus-Pro image token count `JANUS_PREVIEW_EVERY_STEPS` is stated against.
JANUS_PRO_TOKENS = 576


def thumbnail(image: Image.Image, size: int = PREVIEW_PIXELS) -> Image.Image:
    small = image.convert("RGB")
    small.thumbnail((size, size), Image.Resampling.BILINEAR)
    return small


def flow_every(every: int, steps: int) -> int:
    """A JanusFlow row of `steps` Euler steps previews as often, relative to its length,
    as a 576-token Janus-Pro row previewing every `every` tokens (30 steps, every 48:
    every 2 steps)."""
    return max(1, round(steps * every / JANUS_PRO_TOKENS))


def due(done: int, shown: int, every: int, steps: int) -> bool:
    """A row that has done `done` of `steps`, last shown at `shown`, is due a preview:
    `every` steps since the last one (or the start), and not finished yet."""
    return 0 < done < steps and done - shown >= max(1, every)
