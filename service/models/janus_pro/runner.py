"""Janus-1.3B / Janus-Pro-1B/7B: transformers' Janus modules, our own continuous engines.

Jobs run in the engines of `janus_pro.engine` (image rows and text rows join and leave
between steps, each job with its own generator) over the lean Llama step (`lm`).
Requests become jobs in `jobs`; both checkpoint layouts load (`loading`). A finished
job's images are VQ-decoded a few at a time (`decode_images`; a chunk out of memory is
split).
"""

from __future__ import annotations

import time
from functools import partial
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
    RunControl,
)
from service.models.compiling import frozen
from service.models.invariance import make_batch_invariant, serial_activations
from service.models.janus_pro.job_builder import DECODE_CHUNK, ImageJob, JobBuilder
from service.models.janus_pro.layout import use_channels_last
from service.models.lm import LeanLM
from service.models.oom import run_split_on_oom
from service.models.prompts import format_of


class JanusProRunner(ModelRunner):
    """Janus-1.3B and Janus-Pro: one architecture, each served in its own prompt format."""

    family = catalog.JANUS_PRO
    tasks = catalog.tasks_of(catalog.JANUS_PRO)

    def __init__(
        self,
        path: str,
        device: str = "cpu",
        compile: bool | None = None,
        family: str = catalog.JANUS_PRO,
        batch_invariant: bool | None = None,
    ) -> None:
        super().__init__(path, device)
        if family not in (catalog.JANUS, catalog.JANUS_PRO):
            raise catalog.CheckpointError(f"not a Janus family: {family!r}")
        self.family = family
        self.model: Any = None
        self.processor: Any = None
        self.lm: LeanLM | None = None  # the LLM's decode step, for both engines
        self.image_scores: Any = None  # the image head and guidance (compiled or not)
        self.text_head: Any = None
        self.eos_token_id = 0
        self.cuda = device.startswith("cuda")
        self.dtype = torch.bfloat16 if self.cuda else torch.float32
        # None: on for CUDA (the step is launch-bound there), off for CPUs
        # (bench/generate.py --compile measures it).
        self.compile = self.cuda if compile is None else compile
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
        self.lm = LeanLM(model.model.language_model, batch_invariant=self.batch_invariant)
        from service.models.janus_pro.engine import guided_scores

        self.image_scores = partial(guided_scores, model.model.generation_head)
        self.text_head = model.lm_head
        self.eos_token_id = processor.tokenizer.eos_token_id
        if self.compile and not self.batch_invariant:
            # (The invariant mode's products and attention are per row, eager by design.)
            self.compile_step()

    def compile_step(self) -> None:
        """torch.compile the engines' step (`compiling`): both heads, and on CUDA the
        decoder layers' math too (on a CPU their products stay MKL's either way, and
        compiling them measured slower than the heads alone: bench/RESULTS.md). The
        first steps of each shape then compile."""
        assert self.lm is not None, "load() the runner first"
        self.image_scores = frozen(self.image_scores, self.device)
        self.text_head = frozen(self.text_head, self.device)
        if self.cuda:
            self.lm.compile()

    def warm_decode(self) -> None:
        self._decode_rows([torch.zeros(self.num_image_tokens, dtype=torch.long,
                                       device=self.device)])

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

        lm = self.lm
        assert lm is not None, "load() the runner first"
        per_token = kv_bytes_per_token(lm.num_layers, lm.kv_heads, lm.head_dim,
                                       lm.dtype.itemsize)
        image = 2 * (SIZING_PROMPT_TOKENS + self.num_image_tokens)
        text = SIZING_PROMPT_TOKENS + self.num_image_tokens + 512
        return int(max(image, text) * per_token * 1.25)

    def open_engine(self, task: str, slots: int) -> Any:
        """Continuous batching for both tasks (`janus_pro.engine`)."""
        from service.models.janus_pro.engine import ImageEngine, JanusTextEngine

        return ImageEngine(self, slots) if task == "generate" else JanusTextEngine(self, slots)

    # -- decoding ----------------------------------------------------------------------

    def image_job(self, request: GenerateRequest) -> ImageJob:
        """A generation request checked and tokenized (its error refuses it alone)."""
        return self.jobs.image_job(request, self.defaults()["generate"])  # type: ignore[union-attr]

    def decode_images(
        self,
        job: ImageJob,
        tokens: torch.Tensor,
        control: RunControl,
        stats: dict[str, Any],
        started: float,
    ) -> GenerateResult | ModelError:
        """A finished job's image tokens -> its images, `DECODE_CHUNK` per VQ decoder call,
        under this one job's `control` (a `Deferred` addresses it by the job's key): a stop
        between chunks cancels; progress runs on to 1."""
        images: list[Image.Image] = []
        for n, start in enumerate(range(0, len(tokens), DECODE_CHUNK)):
            if control.should_stop(0):
                return Canceled("canceled")
            rows = list(tokens[start : start + DECODE_CHUNK])
            # A chunk that does not fit is split further; one image that cannot fit fails the job.
            decoded = run_split_on_oom(self._decode_rows, rows)
            for item in decoded:
                if isinstance(item, ModelError):
                    return item
                images.append(item)
            done = self.num_image_tokens + n + 1
            control.report_progress(0, done / job.units, done, job.units)
        stats["seconds"] = round(time.monotonic() - started, 3)
        return GenerateResult(images=images, stats=stats)

    def _decode_rows(self, rows: list[torch.Tensor]) -> list[Image.Image]:
        with torch.inference_mode():
            return to_pil(self.model.decode_image_tokens(torch.stack(rows)))


def to_pil(pixels: torch.Tensor) -> list[Image.Image]:
    """(N, H, W, C) VQ decoder output in [-1, 1] -> RGB images, as DeepSeek's `unpack`:
    `np.clip((dec + 1) / 2 * 255, 0, 255)` stored into a uint8 array, which truncates."""
    rgb = ((pixels.float() + 1) / 2 * 255).clamp(0, 255).to(torch.uint8)
    return [Image.fromarray(a).convert("RGB") for a in rgb.cpu().numpy()]
