"""Janus / Janus-Pro, continuous: image and text rows join the running decode between steps.

Both engines keep their rows in a `RaggedCache` (each row owns its columns from 0), one
block of rows per job in admission order, and the last hidden state of every row. A step
samples one token for every job from its own generator (`sampling.sample`), lets the jobs
that are done leave (compaction), then runs one decode step over the rows that remain. A
job admitted between steps is prefilled on its own (its prompt unpadded, as when alone)
and its rows are appended.

Images (here): a job with guidance g != 1 has n conditional rows then n unconditional rows; with
g == 1 only the n conditional rows (no unconditional pass at all). It finishes after its
576th token (the last one is never fed back) and is VQ-decoded inside that step.
Text (understanding): `text_engine`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from PIL import Image

from service.models.base import (
    GenerateRequest,
    GenerateResult,
    ModelError,
    NullControl,
    OutOfMemory,
)
from service.models.engine import EngineBase, Finished, Key, failure
from service.models.janus_pro.sampling import sample
from service.models.janus_pro.slots import RaggedCache
from service.models.preview import due, thumbnail

if TYPE_CHECKING:
    from service.models.janus_pro.runner import JanusProRunner


@dataclass
class _Job:
    job: Any  # ImageJob | TextJob
    rows: int  # cache rows
    generator: torch.Generator | None
    started: float
    done: int = 0  # tokens sampled
    out: list[int] = field(default_factory=list)  # text: the answer's ids so far
    tokens: torch.Tensor | None = None  # images: (n, steps)
    preview: bool = False  # the job asked for previews
    shown: int = 0  # images: tokens done at its last preview


class _Ragged(EngineBase):
    """Rows, hidden states and compaction shared by the image and text engines."""

    def __init__(self, runner: JanusProRunner, task: str, slots: int) -> None:
        super().__init__(task, slots)
        self.runner = runner
        self.decoder = runner.decoder
        assert self.decoder is not None, "load() the runner first"
        self.lm = self.decoder.lm
        self.cache = RaggedCache(self.lm, per_row=runner.batch_invariant)
        self.jobs: dict[Key, _Job] = {}  # admission order == cache order
        self.hidden = torch.empty(0, self.lm.hidden, dtype=self.lm.dtype, device=self.lm.device)
        self.steps_run = 0
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

    def _blocks(self) -> list[tuple[Key, _Job, int, int]]:
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


class ImageEngine(_Ragged):
    def __init__(self, runner: JanusProRunner, slots: int) -> None:
        super().__init__(runner, "generate", slots)
        self.steps = runner.num_image_tokens
        self.head = runner.model.model.generation_head
        self.embed = runner.model.prepare_embeddings_for_image_generation
        self._filler: int | None = None  # the preview's token for positions not produced yet

    @torch.inference_mode()
    def admit(self, items: list[tuple[Key, Any]]) -> list[tuple[Key, ModelError]]:
        taken, refused = self._room(items)
        for key, request in taken:
            if full := self._full():
                refused.append((key, full))
                continue
            try:
                if not isinstance(request, GenerateRequest):
                    raise ModelError(f"not a generation request: {type(request).__name__}")
                job = self.runner._image_job(0, request)
                guided = job.guidance != 1.0
                n = job.num_images
                ids = torch.stack([job.cond_ids, job.uncond_ids]) if guided else job.cond_ids[None]
                embeds = self.lm.embed_tokens(ids.to(self.lm.device))
                live = _Job(job, n * (2 if guided else 1), self._generator(job), time.monotonic())
                live.tokens = torch.empty(n, self.steps, dtype=torch.long, device=self.lm.device)
                live.preview = request.preview
                self._append(embeds, [0] * n + ([1] * n if guided else []), self.steps - 1)
            except Exception as e:
                refused.append((key, failure(e)))
                continue
            self.jobs[key] = live
        return refused

    def progress(self) -> dict[Key, tuple[int, int]]:
        return {k: (live.done, live.job.units) for k, live in self.jobs.items()}

    @torch.inference_mode()
    def previews(self, every: int) -> dict[Key, Image.Image]:
        out: dict[Key, Image.Image] = {}
        for key, live in self.jobs.items():
            if live.preview and due(live.done, live.shown, every, self.steps):
                live.shown = live.done
                out[key] = self._preview(live.tokens[0, : live.done])  # type: ignore[index]
        return out

    def _preview(self, so_far: torch.Tensor) -> Image.Image:
        """The first image's tokens so far, VQ-decoded. The positions not produced yet are
        filled with the codebook entry of least norm (the most neutral latent, so it bleeds
        least into its decoded neighbours), then painted mid-grey in pixel space: the
        picture forms top-down over a grey card. `so_far` is read, never written."""
        if self._filler is None:
            weight = self.runner.model.model.vqmodel.quantize.embedding.weight
            self._filler = int(weight.float().norm(dim=1).argmin())
        full = torch.full((1, self.steps), self._filler, dtype=torch.long, device=so_far.device)
        full[0, : len(so_far)] = so_far
        pixels = self.runner.model.decode_image_tokens(full)[0].float()  # (H, W, C) in [-1, 1]
        grid = round(self.steps**0.5)
        patch = pixels.shape[0] // grid
        pending = torch.arange(self.steps, device=pixels.device) >= len(so_far)
        mask = pending.view(grid, grid).repeat_interleave(patch, 0).repeat_interleave(patch, 1)
        pixels[: mask.shape[0], : mask.shape[1]][mask] = 0.0  # 0 is mid-grey in [-1, 1]
        return thumbnail(self.runner._to_pil(pixels[None])[0])

    def _layout(self) -> None:
        """Per-step index tensors, rebuilt only when rows join or leave."""
        cond, uncond, guided, guidance, temperature, greedy, row_image = [], [], [], [], [], [], []
        self.spans, image = [], 0
        for k, (_, live, a, _b) in enumerate(self._blocks()):
            job, n = live.job, live.job.num_images
            g = job.guidance != 1.0
            self.spans.append((k, image, image + n))
            cond += range(a, a + n)
            uncond += range(a + n, a + 2 * n) if g else range(a, a + n)
            guided += [g] * n
            guidance += [job.guidance] * n
            temperature += [job.temperature if job.temperature > 0 else 1.0] * n
            greedy += [job.temperature <= 0] * n
            row_image += list(range(image, image + n)) * (2 if g else 1)
            image += n
        device = self.lm.device

        def col(values: list, dtype: torch.dtype) -> torch.Tensor:
            return torch.tensor(values, dtype=dtype, device=device)

        self.cond_idx, self.uncond_idx = col(cond, torch.long), col(uncond, torch.long)
        self.guided = col(guided, torch.bool)[:, None]
        self.guidance = col(guidance, torch.float32)[:, None]
        self.temperature = col(temperature, torch.float32)[:, None]
        self.greedy = col(greedy, torch.bool) if any(greedy) else None
        self.row_image = col(row_image, torch.long)
        self.uniform = torch.zeros(image, 1, dtype=torch.float32, device=device)
        self.generators = [live.generator for live in self.jobs.values()]
        self._layout_stale = False

    @torch.inference_mode()
    def step(self) -> Finished:
        if not self.jobs:
            return []
        if self._layout_stale:
            self._layout()
        started = time.monotonic()
        # DeepSeek's guidance, uncond + g * (cond - uncond), mixed before the head's last
        # (affine) layer as `JanusDecoder._guided_logits` does; g == 1 rows take cond as is.
        act = self.head.activation_fn(self.head.proj_out(self.hidden)).float()
        cond, uncond = act[self.cond_idx], act[self.uncond_idx]
        mixed = torch.where(self.guided, uncond + (cond - uncond) * self.guidance, cond)
        scores = self.head.vision_head(mixed.to(self.hidden.dtype)).float() / self.temperature
        token = sample(scores, self.spans, self.generators, self.uniform, self.greedy)
        finished: set[Key] = set()
        for (key, live), (_, a, b) in zip(self.jobs.items(), self.spans, strict=True):
            live.tokens[:, live.done] = token[a:b]  # type: ignore[index]
            live.done += 1
            if live.done == self.steps:
                finished.add(key)
        done = {k: self.jobs[k] for k in finished}
        if finished:
            keep = [i for (k, a, b), key in zip(self.spans, self.jobs, strict=True)
                    if key not in finished for i in range(a, b)]
            token = token[keep]
            self._leave(finished)
            self._layout()
        out: Finished = []
        if self.jobs:
            x = self.embed(token[:, None])[self.row_image]
            out += self._forward(x)
        step_seconds = time.monotonic() - started
        self.steps_run += 1
        for key, live in done.items():
            out.append((key, self._images(live, step_seconds)))
        return out

    def _images(self, live: _Job, step_seconds: float) -> GenerateResult | ModelError:
        job = live.job
        stats = {"prompt_tokens": len(job.cond_ids), "image_tokens": self.steps * job.num_images,
                 "batch_jobs": len(self.jobs) + 1, "step_seconds": step_seconds}
        try:
            return self.runner._decode_images(job, live.tokens, NullControl(), stats, live.started)
        except Exception as e:
            return failure(e)
