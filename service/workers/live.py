"""What a running job tells its watchers: progress (throttled) and the new text of an answer.

`started` and the terminal status are announced by the lifecycle hook after the
commits that make them (service/core/events.py), so only what happens between
those two comes from here. Everything is an `EventLog.emit`: a queue append,
never a network wait, never an exception.
"""

from __future__ import annotations

import base64
import io
import logging
import time
from typing import Any

from PIL import Image

from service.core import events
from service.core.events import EventLog

log = logging.getLogger(__name__)

# Held back from a token event until more text follows: a partly decoded character
# (the tokenizer's replacement mark) and trailing whitespace, which the final answer
# strips. The concatenated token texts then equal the job's `output.text`.
_REPLACEMENT = "\ufffd"

PREVIEW_QUALITY = 70
PREVIEW_MAX_BYTES = 48 * 1024  # before base64: an event stays well under 64 KiB


class LiveReporter:
    """Turns a runner's per-step reports into live events for the jobs it runs, by job id."""

    def __init__(self, log: EventLog | None, progress_seconds: float) -> None:
        self.log = log
        self.every = progress_seconds
        self._last_progress: dict[str, float] = {}
        self._done: dict[str, bool] = {}  # the last report sent said 1.0
        self._steps: dict[str, int] = {}  # the last known step count, per job
        self._sent: dict[str, str] = {}  # text already sent, per job

    def progress(
        self, job_id: str, fraction: float, step: int | None, steps: int | None
    ) -> None:
        if self.log is None:
            return
        if steps is not None:
            self._steps[job_id] = steps
        elif fraction >= 1.0 and job_id in self._steps:  # "done" reported without counts
            step = steps = self._steps[job_id]
        now = time.monotonic()
        last = self._last_progress.get(job_id)
        # Always the first and the last report; in between, at most one per `every` s.
        if last is not None and (fraction < 1.0 and now - last < self.every
                                 or self._done.get(job_id)):
            return
        self._last_progress[job_id] = now
        self._done[job_id] = fraction >= 1.0
        self.log.emit(job_id, events.PROGRESS,
                      {"step": step, "steps": steps, "fraction": round(fraction, 4)})

    def text(self, job_id: str, text_so_far: str) -> None:
        if self.log is None:
            return
        sent = self._sent.get(job_id, "")
        shown = visible(text_so_far)
        if len(shown) <= len(sent) or not shown.startswith(sent):
            # Nothing new, or the decoder rewrote text already sent (it cannot be taken
            # back): wait until the text extends what was sent.
            return
        self._sent[job_id] = shown
        self.log.emit(job_id, events.TOKEN, {"text": shown[len(sent):]})

    def final_text(self, job_id: str, answer: str) -> None:
        """The job's answer is known: send what was held back (a trailing half character is
        final now). After this the joined token texts equal `answer`."""
        if self.log is None:
            return
        sent = self._sent.get(job_id, "")
        if answer.startswith(sent) and len(answer) > len(sent):
            self._sent[job_id] = answer
            self.log.emit(job_id, events.TOKEN, {"text": answer[len(sent):]})

    def engine_previews(self, engine: Any, every: int) -> None:
        """Previews of the engine's rows that asked (the engine paces them). A preview is a
        nicety: any failure here is logged and skipped, never a job's failure."""
        take = getattr(engine, "previews", None)
        if take is None:
            return
        try:
            shots = take(every)
            if not shots:
                return
            progress = engine.progress()
            for key, image in shots.items():
                done, steps = progress.get(key, (None, None))
                self.preview(str(key), image, done, steps)
        except Exception:
            log.warning("previews failed; the jobs go on", exc_info=True)

    def preview(self, job_id: str, image: Image.Image, step: int | None,
                steps: int | None) -> None:
        """A small JPEG of the picture so far, inline: previews are thumbnails (a few KiB),
        and one too large for an event is skipped rather than sent."""
        if self.log is None:
            return
        buffer = io.BytesIO()
        image.convert("RGB").save(buffer, "JPEG", quality=PREVIEW_QUALITY)
        if buffer.tell() > PREVIEW_MAX_BYTES:
            return
        self.log.emit(job_id, events.PREVIEW, {
            "step": step, "steps": steps, "content_type": "image/jpeg",
            "b64_json": base64.b64encode(buffer.getvalue()).decode("ascii")})

    def forget(self, job_id: str) -> None:
        """The job left this worker: drop what was kept for it (an engine runs for hours)."""
        for kept in (self._last_progress, self._done, self._steps, self._sent):
            kept.pop(job_id, None)


def visible(text: str) -> str:
    """The part of a partial answer that is final: no leading or trailing whitespace
    (the answer is stripped) and no half-decoded character at the end."""
    text = text.lstrip()
    cut = len(text)
    while cut and text[cut - 1] == _REPLACEMENT:
        cut -= 1
    return text[:cut].rstrip()
