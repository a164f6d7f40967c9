"""Janus / Janus-Pro, continuous: image and text rows join the running decode between steps.

Both engines keep their rows in a `RaggedCache` (`ragged_engine.RaggedEngine`: one block
of rows per job, compaction, the shape of a step).

Images (here): a job with guidance g != 1 has n conditional rows then n unconditional rows; with
g == 1 only the n conditional rows (no unconditional pass at all). It finishes after its
576th token (the last one is never fed back) and leaves; it is VQ-decoded inside that step,
or, when the caller set `defer`, handed out as a `Deferred` that the caller decodes.
Text (understanding): the family-neutral `text_engine.TextEngine`; the jobs admitted
together share one pass of the image tower (`JobBuilder.text_jobs`).
"""

from __future__ import annotations

import time
from typing import Any

import torch
from PIL import Image

from service.models.base import (
    GenerateRequest,
    UnderstandRequest,
)
from service.models.engine import Deferred, Key
from service.models.janus_pro.runner import JanusProRunner, to_pil
from service.models.preview import due, thumbnail
from service.models.ragged_engine import RaggedEngine, Row
from service.models.sampling import sample
from service.models.text_engine import TextEngine, TextJob


class ImageEngine(RaggedEngine):
    request_type = GenerateRequest

    def __init__(self, runner: JanusProRunner, slots: int) -> None:
        assert runner.lm is not None, "load() the runner first"
        super().__init__(runner.lm, "generate", slots, runner.batch_invariant)
        self.runner = runner
        self.steps = runner.num_image_tokens
        self.embed = runner.model.prepare_embeddings_for_image_generation
        self._filler: int | None = None  # the preview's token for positions not produced yet

    def _prepare(self, key: Key, request: GenerateRequest) -> Row:
        job = self.runner.image_job(request)
        guided = job.guidance != 1.0
        n = job.num_images
        ids = torch.stack([job.cond_ids, job.uncond_ids]) if guided else job.cond_ids[None]
        embeds = self.lm.embed_tokens(ids.to(self.lm.device))
        live = Row(job, n * (2 if guided else 1), self._generator(job), time.monotonic())
        live.tokens = torch.empty(n, self.steps, dtype=torch.long, device=self.lm.device)
        live.preview = request.preview
        self._append(embeds, [0] * n + ([1] * n if guided else []), self.steps - 1)
        return live

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
        return thumbnail(to_pil(pixels[None])[0])

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

    def _sample(self) -> tuple[torch.Tensor, set[Key]]:
        scores = self.runner.image_scores(self.hidden, self.cond_idx, self.uncond_idx,
                                          self.guided, self.guidance, self.temperature)
        token = sample(scores, self.spans, self.generators, self.uniform, self.greedy)
        finished: set[Key] = set()
        for (key, live), (_, a, b) in zip(self.jobs.items(), self.spans, strict=True):
            live.tokens[:, live.done] = token[a:b]  # type: ignore[index]
            live.done += 1
            if live.done == self.steps:
                finished.add(key)
        return token, finished

    def _inputs(self, token: torch.Tensor) -> torch.Tensor:
        return self.embed(token[:, None])[self.row_image]

    def _result(self, live: Row, step_seconds: float) -> Any:
        job, tokens = live.job, live.tokens
        stats = {"prompt_tokens": len(job.cond_ids), "image_tokens": self.steps * job.num_images,
                 "batch_jobs": self.stepping, "step_seconds": step_seconds}
        decode = Deferred(lambda control: self.runner.decode_images(
            job, tokens, control, stats, live.started))
        return decode if self.defer else decode.finish()


def guided_scores(head: Any, hidden: torch.Tensor, cond_idx: torch.Tensor,
                  uncond_idx: torch.Tensor, guided: torch.Tensor, guidance: torch.Tensor,
                  temperature: torch.Tensor) -> torch.Tensor:
    """Each image's logits over the codebook from its rows' last hidden states: DeepSeek's
    guidance, uncond + g * (cond - uncond), over the full codebook (no top-k). The head is
    proj_out -> activation -> vision_head and its last layer is affine, so mixing the
    activations before it gives the same logits for half the rows through the head's
    largest matrix; g == 1 rows take cond as is."""
    act = head.activation_fn(head.proj_out(hidden)).float()
    cond, uncond = act[cond_idx], act[uncond_idx]
    mixed = torch.where(guided, uncond + (cond - uncond) * guidance, cond)
    return head.vision_head(mixed.to(hidden.dtype)).float() / temperature


class JanusTextEngine(TextEngine):
    def __init__(self, runner: JanusProRunner, slots: int) -> None:
        assert runner.lm is not None, "load() the runner first"
        super().__init__(runner.lm, slots, head=runner.text_head, eos=runner.eos_token_id,
                         tokenizer=runner.processor.tokenizer, per_row=runner.batch_invariant)
        self.runner = runner

    def _prepare(self, key: Key, request: UnderstandRequest) -> UnderstandRequest:
        return request  # checked in `_jobs`, with the group's image tower pass

    def _jobs(self, ready: list[UnderstandRequest]) -> list[TextJob | Exception]:
        return self.runner.jobs.text_jobs(  # type: ignore[union-attr]
            ready, self.runner.defaults()["understand"])
