"""Janus-1.3B / Janus-Pro-1B/7B: transformers' Janus modules, our own batched decode loops.

The worker hands over up to `--max-batch` compatible jobs at once; they run as one batch
through `decode` (one forward pass per step for every job, each job with its own
generator). Requests become jobs in `jobs`; both checkpoint layouts load
(`loading`). Out-of-memory splits the batch (`oom.run_split_on_oom`), and images are
VQ-decoded a few at a time.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from PIL import Image

from service.models import catalog
from service.models.base import (
    Canceled,
    GenerateRequest,
    GenerateResult,
    ModelError,
    ModelRunner,
    NullControl,
    OutOfMemory,
    RunControl,
    UnderstandRequest,
    UnderstandResult,
)
from service.models.invariance import make_batch_invariant, serial_activations
from service.models.janus_pro.decode import JanusDecoder
from service.models.janus_pro.jobs import DECODE_CHUNK, ImageJob, JobBuilder
from service.models.janus_pro.layout import use_channels_last
from service.models.lm import LeanLM
from service.models.oom import run_split_on_oom
from service.models.prompts import format_of
from service.models.text_engine import TextJob, text_usage

# On a GPU, cancellation (and end-of-text) is checked every this many steps: each check is
# host work the device would otherwise not wait for.
CUDA_POLL_EVERY = 8


class JanusProRunner(ModelRunner):
    """Janus-1.3B and Janus-Pro: one architecture, each served in its own prompt format."""

    family = catalog.JANUS_PRO
    tasks = catalog.tasks_of(catalog.JANUS_PRO)

    def __init__(
        self,
        path: str,
        device: str = "cpu",
        compile: bool = False,
        family: str = catalog.JANUS_PRO,
        batch_invariant: bool | None = None,
    ) -> None:
        super().__init__(path, device)
        if family not in (catalog.JANUS, catalog.JANUS_PRO):
            raise catalog.CheckpointError(f"not a Janus family: {family!r}")
        self.family = family
        self.model: Any = None
        self.processor: Any = None
        self.decoder: JanusDecoder | None = None
        self.cuda = device.startswith("cuda")
        self.dtype = torch.bfloat16 if self.cuda else torch.float32
        # torch.compile targets GPU launch overhead. On a CPU the compiled fixed-shape step
        # (full-length attention) measured 5x slower than the eager step that attends over
        # filled columns only (tiny 384 px checkpoint, 4 jobs), so the flag is ignored there.
        self.compile = compile and self.cuda
        # None: off. One product per row costs +80% to +430% here on CPUs (bench/RESULTS.md,
        # bench/invariance.py), and the sampled tokens held without it in every batch tested.
        self.batch_invariant = bool(batch_invariant)
        self.image_size = 384
        self.num_image_tokens = 576
        self.max_positions = 16384
        self.jobs: JobBuilder | None = None

    def load(self) -> None:
        from service.models.janus_pro.loading import load_model_and_processor

        model, processor = load_model_and_processor(
            self.path, self.device, self.dtype, self.family
        )
        self.attach(model, processor)

    def attach(self, model: Any, processor: Any) -> None:
        """Serve an already loaded model (`load()` ends here; the benchmark calls it directly)."""
        self.model, self.processor = model.eval(), processor
        if self.batch_invariant:
            make_batch_invariant(model)
            serial_activations(model.model.vqmodel.decoder)
        if not self.cuda and not self.batch_invariant:  # (invariant: NCHW, tested as such)
            use_channels_last(model.model.vqmodel)
        config = model.config
        vq = config.vq_config
        # The VQ decoder upsamples each latent patch by 2 per level after the first.
        self.image_size = vq.num_patches * 2 ** (len(vq.channel_multiplier) - 1)
        self.num_image_tokens = config.vision_config.num_image_tokens
        self.max_positions = config.text_config.max_position_embeddings
        prompts = format_of(self.family)
        self.jobs = JobBuilder(model, processor, self.device, self.dtype, prompts)
        self.decoder = JanusDecoder(
            model,
            LeanLM(model.model.language_model, compile_step=self.compile,
                   batch_invariant=self.batch_invariant),
            self.num_image_tokens,
            eos_token_id=processor.tokenizer.eos_token_id,
            poll_every=CUDA_POLL_EVERY if self.cuda else 1,
        )
        self.decoder.detokenize = lambda ids: processor.tokenizer.decode(
            ids, skip_special_tokens=True)

    def warmup(self) -> None:
        # Two prompts of different lengths: padding, per-job sampling, and (when compiled)
        # the dynamic-shape graph all get exercised before the first real job.
        self.understand([UnderstandRequest(Image.new("RGB", (32, 32)), "hi", max_new_tokens=2)])
        self.generate(
            [
                GenerateRequest("warm-up", seed=1),
                GenerateRequest("a longer warm-up prompt", seed=2, temperature=0.0),
            ]
        )

    def defaults(self) -> dict[str, dict[str, Any]]:
        values = catalog.defaults_of(self.family)
        values["generate"]["image_size"] = self.image_size
        return values

    def slot_bytes(self) -> int:
        """Memory of one engine slot (docs/OPERATIONS.md, "Sizing"): a single-image guided
        generation job, 2 rows x (prompt budget + 576 image tokens) of KV cache, or an
        understanding job, 1 row x (prompt budget + 576 image patches + 512 answer
        tokens), whichever is larger, plus 25% for the step's activations."""
        from service.models.engine import SIZING_PROMPT_TOKENS, kv_bytes_per_token

        lm = self.decoder.lm  # type: ignore[union-attr]
        per_token = kv_bytes_per_token(lm.num_layers, lm.kv_heads, lm.head_dim,
                                       lm.dtype.itemsize)
        image = 2 * (SIZING_PROMPT_TOKENS + self.num_image_tokens)
        text = SIZING_PROMPT_TOKENS + self.num_image_tokens + 512
        return int(max(image, text) * per_token * 1.25)

    def open_engine(self, task: str, slots: int) -> Any:
        """Continuous batching for both tasks (`janus_pro.engine`)."""
        from service.models.janus_pro.engine import ImageEngine, JanusTextEngine

        return ImageEngine(self, slots) if task == "generate" else JanusTextEngine(self, slots)

    # -- helpers -----------------------------------------------------------------------

    def _prepare(self, batch: list[Any], control: RunControl, prepare: Any) -> tuple[list, list]:
        """Per-request validation; failures become that request's result, not the batch's."""
        results: list[Any] = [None] * len(batch)
        jobs = []
        for i, req in enumerate(batch):
            try:
                if control.should_stop(i):
                    raise Canceled("canceled before start")
                jobs.append(prepare(i, req))
            except ModelError as e:
                results[i] = e
            except torch.OutOfMemoryError as e:  # the image tower of an understanding job
                results[i] = OutOfMemory(str(e).splitlines()[0] if str(e) else "out of memory")
            except Exception as e:
                results[i] = ModelError(str(e) or type(e).__name__)
        return results, jobs

    @staticmethod
    def _to_pil(pixels: torch.Tensor) -> list[Image.Image]:
        """(N, H, W, C) VQ decoder output in [-1, 1] -> RGB images, as DeepSeek's `unpack`:
        `np.clip((dec + 1) / 2 * 255, 0, 255)` stored into a uint8 array, which truncates."""
        rgb = ((pixels.float() + 1) / 2 * 255).clamp(0, 255).to(torch.uint8)
        return [Image.fromarray(a).convert("RGB") for a in rgb.cpu().numpy()]

    # -- generate ----------------------------------------------------------------------

    def generate(
        self, batch: list[GenerateRequest], control: RunControl | None = None
    ) -> list[GenerateResult | ModelError]:
        control = control or NullControl()
        results, jobs = self._prepare(batch, control, self._image_job)
        if jobs:
            outcome = run_split_on_oom(lambda js: self._generate_jobs(js, control, len(jobs)), jobs)
            for job, result in zip(jobs, outcome, strict=True):
                results[job.index] = result
        return results

    def _image_job(self, index: int, req: GenerateRequest) -> ImageJob:
        return self.jobs.image_job(index, req, self.defaults()["generate"])

    def _generate_jobs(
        self, jobs: list[ImageJob], control: RunControl, offered: int
    ) -> list[GenerateResult | ModelError]:
        started = time.monotonic()
        with torch.inference_mode():
            tokens = self.decoder.image_tokens(jobs, control)
        seconds = time.monotonic() - started
        results: list[GenerateResult | ModelError] = []
        for job, out in zip(jobs, tokens, strict=True):
            if isinstance(out, ModelError):
                results.append(out)
                continue
            results.append(
                self._decode_images(
                    job,
                    out,
                    control,
                    {
                        "prompt_tokens": len(job.cond_ids),
                        "image_tokens": self.num_image_tokens * job.num_images,
                        "batch_jobs": len(jobs),
                        "batch_offered": offered,
                        "decode_seconds": round(seconds, 3),
                        # mean time of one step of the shared loop (the batch's, not the job's)
                        "step_seconds": seconds / self.num_image_tokens,
                    },
                    started,
                )
            )
        return results

    def _decode_images(
        self,
        job: ImageJob,
        tokens: torch.Tensor,
        control: RunControl,
        stats: dict[str, Any],
        started: float,
    ) -> GenerateResult | ModelError:
        images: list[Image.Image] = []
        for n, start in enumerate(range(0, len(tokens), DECODE_CHUNK)):
            if control.should_stop(job.index):
                return Canceled("canceled")
            rows = list(tokens[start : start + DECODE_CHUNK])
            # A chunk that does not fit is split further; one image that cannot fit fails the job.
            decoded = run_split_on_oom(self._decode_rows, rows)
            for item in decoded:
                if isinstance(item, ModelError):
                    return item
                images.append(item)
            done = self.num_image_tokens + n + 1
            control.report_progress(job.index, done / job.units, done, job.units)
        stats["seconds"] = round(time.monotonic() - started, 3)
        return GenerateResult(images=images, stats=stats)

    def _decode_rows(self, rows: list[torch.Tensor]) -> list[Image.Image]:
        with torch.inference_mode():
            pixels = self.model.decode_image_tokens(torch.stack(rows))
            return self._to_pil(pixels)

    # -- understand --------------------------------------------------------------------

    def understand(
        self, batch: list[UnderstandRequest], control: RunControl | None = None
    ) -> list[UnderstandResult | ModelError]:
        control = control or NullControl()
        results, jobs = self._prepare(batch, control, self._text_job)
        if jobs:
            outcome = run_split_on_oom(lambda js: self._understand_jobs(js, control), jobs)
            for job, result in zip(jobs, outcome, strict=True):
                results[job.index] = result
        return results

    def _text_job(self, index: int, req: UnderstandRequest) -> TextJob:
        return self.jobs.text_job(index, req, self.defaults()["understand"])

    def _understand_jobs(
        self, jobs: list[TextJob], control: RunControl
    ) -> list[UnderstandResult | ModelError]:
        started = time.monotonic()
        with torch.inference_mode():
            outputs = self.decoder.text_tokens(jobs, control)
        seconds = round(time.monotonic() - started, 3)
        results: list[UnderstandResult | ModelError] = []
        for job, out in zip(jobs, outputs, strict=True):
            if isinstance(out, ModelError):
                results.append(out)
                continue
            answer = self.processor.tokenizer.decode(out, skip_special_tokens=True).strip()
            control.report_progress(job.index, 1.0)  # an early end-of-sentence finishes too
            results.append(
                UnderstandResult(
                    text=answer,
                    stats={
                        "prompt_tokens": int(job.embeds.shape[0]),
                        "new_tokens": len(out),
                        "batch_jobs": len(jobs),
                        "seconds": seconds,
                    },
                    **text_usage(job, len(out)),
                )
            )
        return results

