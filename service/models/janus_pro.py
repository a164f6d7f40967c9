"""Janus-1.3B / Janus-Pro-1B/7B through transformers' own Janus implementation.

Checkpoints are in transformers' converted layout (e.g. `deepseek-community/Janus-Pro-7B`)
and load with `JanusForConditionalGeneration` / `JanusProcessor.from_pretrained`.

Jobs in a batch run one after another in this phase: each job is seeded with
`torch.manual_seed` just before it runs, so the same request and seed give the same output
whatever else shares the batch. Per-step cancellation and progress ride on hooks that
`generate` calls once per token (see `_StepHook`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

import torch
from PIL import Image
from transformers import (
    LogitsProcessor,
    LogitsProcessorList,
    StoppingCriteria,
    StoppingCriteriaList,
)

from service.models import registry
from service.models.base import (
    Canceled,
    GenerateRequest,
    GenerateResult,
    InvalidInput,
    ModelError,
    ModelRunner,
    NullControl,
    OutOfMemory,
    RunControl,
    UnderstandRequest,
    UnderstandResult,
)

# The published 16-image example runs out of memory in the VQ decoder, not in the LLM:
# decoding at most this many images per call bounds that peak.
DECODE_CHUNK = 4

T = TypeVar("T")


class _Stop(Exception):
    """Raised from inside `generate` to abandon a job the control wants stopped."""


class _StepHook:
    """Counts decoding steps of one job; checks for cancellation and reports progress."""

    def __init__(self, control: RunControl, index: int, total: int) -> None:
        self.control, self.index, self.total, self.done = control, index, max(total, 1), 0

    def step(self) -> None:
        if self.control.should_stop(self.index):
            raise _Stop
        self.done += 1
        self.control.report_progress(self.index, min(self.done / self.total, 1.0))


class _ImageStepProcessor(LogitsProcessor):
    # Janus' image `generate` runs its own token loop and calls the logits processors
    # exactly once per image token, so a pass-through processor is a per-step hook.
    def __init__(self, hook: _StepHook) -> None:
        self.hook = hook

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        self.hook.step()
        return scores


class _CondOnly(LogitsProcessor):
    # Guidance 1.0 means "no guidance", but transformers' CFG processor refuses scale <= 1
    # and Janus still feeds it conditional + unconditional rows; keep the conditional half.
    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        return scores[: input_ids.shape[0]]


class _TextStepCriteria(StoppingCriteria):
    # Janus' text-mode `generate` drops a `logits_processor` argument (it forwards only
    # `**kwargs` to GenerationMixin.generate), but stopping criteria do travel in kwargs
    # and are called once per new token, so the text hook lives here. It never stops.
    def __init__(self, hook: _StepHook) -> None:
        self.hook = hook

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
        self.hook.step()
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


class JanusProRunner(ModelRunner):
    family = registry.JANUS_PRO
    tasks = registry.tasks_of(registry.JANUS_PRO)

    def __init__(self, path: str, device: str = "cpu") -> None:
        super().__init__(path, device)
        self.model: Any = None
        self.processor: Any = None
        self.dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
        self.image_size = 384
        self.num_image_tokens = 576
        self.max_positions = 16384
        self._special_strings: list[str] = []

    def load(self) -> None:
        from transformers import JanusForConditionalGeneration, JanusProcessor

        self.processor = JanusProcessor.from_pretrained(self.path)
        # device_map loads the shards straight onto the device (no full copy in host RAM).
        model = JanusForConditionalGeneration.from_pretrained(
            self.path, dtype=self.dtype, device_map=self.device
        )
        self.model = model.eval()
        config = model.config
        vq = config.vq_config
        # The VQ decoder upsamples each latent patch by 2 per level after the first.
        self.image_size = vq.num_patches * 2 ** (len(vq.channel_multiplier) - 1)
        self.num_image_tokens = config.vision_config.num_image_tokens
        self.max_positions = config.text_config.max_position_embeddings
        tokenizer = self.processor.tokenizer
        specials = set(tokenizer.all_special_tokens)
        specials.update(t.content for t in tokenizer.added_tokens_decoder.values() if t.special)
        # Longest first, so a token that contains another is removed whole.
        self._special_strings = sorted(specials, key=len, reverse=True)

    def defaults(self) -> dict[str, dict[str, Any]]:
        values = registry.defaults_of(self.family)
        values["generate"]["image_size"] = self.image_size
        return values

    # -- helpers -----------------------------------------------------------------------

    def _clean(self, text: str) -> str:
        # User text must not smuggle in control tokens (e.g. an image placeholder with no
        # image, which the processor rejects, or a fake end-of-turn).
        for token in self._special_strings:
            text = text.replace(token, "")
        return text.strip()

    def _run_job(self, index: int, control: RunControl, job: Callable[[], T]) -> T | ModelError:
        """Run one job, turning its failure into that job's result instead of the batch's."""
        try:
            if control.should_stop(index):
                return Canceled("canceled before start")
            with torch.inference_mode():
                return job()
        except _Stop:
            return Canceled("canceled")
        except ModelError as e:
            return e
        except torch.OutOfMemoryError as e:
            if self.device.startswith("cuda"):
                torch.cuda.empty_cache()
            return OutOfMemory(str(e) or "out of memory")
        except Exception as e:
            return ModelError(str(e) or type(e).__name__)

    def _to_pil(self, pixels: torch.Tensor) -> list[Image.Image]:
        """(N, H, W, C) decoder output, normalised like the processor's inputs -> RGB images."""
        ip = self.processor.image_processor
        mean = torch.tensor(ip.image_mean, dtype=torch.float32, device=pixels.device)
        std = torch.tensor(ip.image_std, dtype=torch.float32, device=pixels.device)
        rgb = (pixels.float() * std + mean).clamp(0, 1).mul(255).round().to(torch.uint8)
        return [Image.fromarray(a).convert("RGB") for a in rgb.cpu().numpy()]

    # -- generate ----------------------------------------------------------------------

    def generate(
        self, batch: list[GenerateRequest], control: RunControl | None = None
    ) -> list[GenerateResult | ModelError]:
        control = control or NullControl()
        return [
            self._run_job(i, control, lambda i=i, r=r: self._generate_one(i, r, control))
            for i, r in enumerate(batch)
        ]

    def _generate_one(
        self, index: int, req: GenerateRequest, control: RunControl
    ) -> GenerateResult:
        started = time.monotonic()
        d = self.defaults()["generate"]
        guidance = d["guidance"] if req.guidance is None else float(req.guidance)
        temperature = d["temperature"] if req.temperature is None else float(req.temperature)
        if req.num_images < 1:
            raise InvalidInput("num_images must be at least 1")
        if guidance < 1.0:
            raise InvalidInput("guidance must be at least 1.0")
        if temperature < 0:
            raise InvalidInput("temperature must not be negative")

        messages = [
            {"role": "user", "content": [{"type": "text", "text": self._clean(req.prompt)}]}
        ]
        text = self.processor.apply_chat_template(messages, add_generation_prompt=True)
        # generation_mode="image" appends the begin-of-image token to the prompt.
        inputs = self.processor(text=text, generation_mode="image", return_tensors="pt")
        prompt_tokens = inputs["input_ids"].shape[1]
        if prompt_tokens + self.num_image_tokens > self.max_positions:
            raise InvalidInput(
                f"prompt too long: {prompt_tokens} tokens; at most "
                f"{self.max_positions - self.num_image_tokens} fit with the image"
            )
        inputs = inputs.to(self.device)

        chunks = -(-req.num_images // DECODE_CHUNK)
        hook = _StepHook(control, index, self.num_image_tokens + chunks)
        processors: list[LogitsProcessor] = [_ImageStepProcessor(hook)]
        if guidance == 1.0:
            processors.append(_CondOnly())
        kwargs: dict[str, Any] = {"do_sample": temperature > 0}
        if temperature > 0:
            kwargs["temperature"] = temperature

        torch.manual_seed(req.seed)
        tokens = self.model.generate(
            **inputs,
            generation_mode="image",
            guidance_scale=guidance,
            num_return_sequences=req.num_images,
            logits_processor=LogitsProcessorList(processors),
            **kwargs,
        )
        images: list[Image.Image] = []
        for start in range(0, tokens.shape[0], DECODE_CHUNK):
            pixels = self.model.decode_image_tokens(tokens[start : start + DECODE_CHUNK])
            images.extend(self._to_pil(pixels))
            del pixels
            hook.step()
        return GenerateResult(
            images=images,
            stats={
                "prompt_tokens": prompt_tokens,
                "image_tokens": self.num_image_tokens * req.num_images,
                "seconds": round(time.monotonic() - started, 3),
            },
        )

    # -- understand --------------------------------------------------------------------

    def understand(
        self, batch: list[UnderstandRequest], control: RunControl | None = None
    ) -> list[UnderstandResult | ModelError]:
        control = control or NullControl()
        return [
            self._run_job(i, control, lambda i=i, r=r: self._understand_one(i, r, control))
            for i, r in enumerate(batch)
        ]

    def _understand_one(
        self, index: int, req: UnderstandRequest, control: RunControl
    ) -> UnderstandResult:
        started = time.monotonic()
        d = self.defaults()["understand"]
        max_new = d["max_new_tokens"] if req.max_new_tokens is None else int(req.max_new_tokens)
        temperature = d["temperature"] if req.temperature is None else float(req.temperature)
        top_p = d["top_p"] if req.top_p is None else float(req.top_p)
        if max_new < 1:
            raise InvalidInput("max_new_tokens must be at least 1")

        messages = [
            {
                "role": "user",
                "content": [{"type": "image"}, {"type": "text", "text": self._clean(req.question)}],
            }
        ]
        text = self.processor.apply_chat_template(messages, add_generation_prompt=True)
        # The processor expands the placeholder to begin/576 image/end tokens and, for
        # published checkpoints, prepends the default system prompt.
        inputs = self.processor(text=text, images=req.image.convert("RGB"), return_tensors="pt")
        prompt_tokens = inputs["input_ids"].shape[1]
        room = self.max_positions - prompt_tokens
        if room < 1:
            raise InvalidInput(
                f"question too long: {prompt_tokens} tokens with the image; "
                f"the model's context is {self.max_positions}"
            )
        # Cut the answer budget, not the question, when only the answer does not fit.
        max_new = min(max_new, room)
        inputs = inputs.to(self.device, dtype=self.dtype)

        hook = _StepHook(control, index, max_new)
        kwargs: dict[str, Any] = {"do_sample": temperature > 0}
        if temperature > 0:
            kwargs.update(temperature=temperature, top_p=top_p)

        torch.manual_seed(req.seed)
        out = self.model.generate(
            **inputs,
            # max_length rather than max_new_tokens: the checkpoint's generation config
            # already carries a max_length, and setting both warns on every call.
            max_length=prompt_tokens + max_new,
            stopping_criteria=StoppingCriteriaList([_TextStepCriteria(hook)]),
            **kwargs,
        )
        new_tokens = out[0, prompt_tokens:]
        answer = self.processor.tokenizer.decode(new_tokens, skip_special_tokens=True).strip()
        control.report_progress(index, 1.0)  # an early end-of-sentence finishes the job too
        return UnderstandResult(
            text=answer,
            stats={
                "prompt_tokens": prompt_tokens,
                "new_tokens": int(new_tokens.shape[0]),
                "seconds": round(time.monotonic() - started, 3),
            },
        )
