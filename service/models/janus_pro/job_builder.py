"""Requests -> decode-loop jobs for Janus: prompt building, validation, defaults.

Each job is prepared on its own, so a bad request fails alone (its error becomes its
result) and a job's prompt never depends on what else is in the batch.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch

from service.models.base import GenerateRequest, InvalidInput, UnderstandRequest
from service.models.prompts import PromptFormat
from service.models.text_engine import TextJob

# Images are VQ-decoded this many at a time: the published 16-image example runs out of
# memory in the VQ decoder, not in the LLM.
DECODE_CHUNK = 4


@dataclass
class ImageJob:
    cond_ids: torch.Tensor  # (p,) prompt ending in <begin_of_image>
    uncond_ids: torch.Tensor  # (p,) the same with everything but BOS/BOI replaced by pad
    num_images: int
    seed: int
    guidance: float
    temperature: float  # 0: greedy
    units: int  # progress units: image tokens plus VQ decode chunks


class JobBuilder:
    """Turns requests into jobs for one loaded model and processor."""

    def __init__(
        self, model: Any, processor: Any, device: str, dtype: torch.dtype, prompts: PromptFormat
    ) -> None:
        self.model, self.processor = model, processor
        self.device, self.dtype = device, dtype
        self.prompts = prompts
        config = model.config
        self.num_image_tokens = config.vision_config.num_image_tokens
        self.max_positions = config.text_config.max_position_embeddings
        tokenizer = processor.tokenizer
        specials = set(tokenizer.all_special_tokens)
        specials.update(t.content for t in tokenizer.added_tokens_decoder.values() if t.special)
        # Longest first, so a token that contains another is removed whole.
        self.special_strings = sorted(specials, key=len, reverse=True)
        self.tokenizer = tokenizer
        self.bos, self.pad = tokenizer.bos_token_id, tokenizer.pad_token_id
        self.boi = tokenizer.convert_tokens_to_ids(processor.image_start_token)
        self.eoi = tokenizer.convert_tokens_to_ids(processor.image_end_token)
        self.image_token = config.image_token_id

    def encode(self, text: str) -> list[int]:
        """BOS + the text's ids, as the reference's `tokenizer.encode(prompt)` gives them.

        The prompt text is ours (`prompts`), not the checkpoint's chat template, and BOS is
        added by hand: converted checkpoints carry transformers' template, which renders
        Janus-Pro's roles for Janus-1.3B too, and a processor may add a system prompt.
        """
        return [self.bos] + self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def understanding_ids(self, req: UnderstandRequest) -> list[int]:
        """The prompt of an understanding job (its question, or its conversation), its one
        image placeholder expanded to <begin_of_image>, one image token per patch,
        <end_of_image> (`add_image_token`)."""
        messages = [replace(m, content=self.clean(m.content)) for m in req.messages]
        ids = self.encode(self.prompts.understanding(self.clean(req.question), messages))
        at = ids.index(self.image_token)
        image = [self.boi] + [self.image_token] * self.num_image_tokens + [self.eoi]
        return ids[:at] + image + ids[at + 1 :]

    def generation_ids(self, prompt: str) -> list[int]:
        """The prompt of a generation job, ending in <begin_of_image>."""
        return self.encode(self.prompts.generation(self.clean(prompt)))

    def clean(self, text: str) -> str:
        # User text must not smuggle in control tokens (e.g. an image placeholder with no
        # image, which the processor rejects, or a fake end-of-turn).
        for token in self.special_strings:
            text = text.replace(token, "")
        return text.strip()

    def image_job(self, req: GenerateRequest, defaults: dict[str, Any]) -> ImageJob:
        guidance = defaults["guidance"] if req.guidance is None else float(req.guidance)
        temperature = float(defaults["temperature"] if req.temperature is None else req.temperature)
        if req.num_images < 1:
            raise InvalidInput("num_images must be at least 1")
        if guidance < 1.0:
            raise InvalidInput("guidance must be at least 1.0")
        if temperature < 0:
            raise InvalidInput("temperature must not be negative")
        ids = torch.tensor(self.generation_ids(req.prompt), dtype=torch.long)
        if len(ids) + self.num_image_tokens > self.max_positions:
            raise InvalidInput(
                f"prompt too long: {len(ids)} tokens; at most "
                f"{self.max_positions - self.num_image_tokens} fit with the image"
            )
        # The unconditional prompt keeps only BOS and BOI, as in DeepSeek's code.
        uncond = ids.masked_fill((ids != self.bos) & (ids != self.boi), self.pad)
        chunks = -(-req.num_images // DECODE_CHUNK)
        units = self.num_image_tokens + chunks
        return ImageJob(ids, uncond, req.num_images, req.seed, guidance, temperature, units)

    def text_jobs(
        self, requests: list[UnderstandRequest], defaults: dict[str, Any]
    ) -> list[TextJob | Exception]:
        """Jobs for these requests, the image tower run once over all their images (the
        continuous engine admits several together); a bad request is its own error."""
        d = defaults
        out: list[Any] = []
        pending: list[tuple[int, torch.Tensor, torch.Tensor, tuple]] = []
        for req in requests:
            try:
                max_new = d["max_new_tokens"] if req.max_new_tokens is None \
                    else int(req.max_new_tokens)
                temperature = d["temperature"] if req.temperature is None \
                    else float(req.temperature)
                top_p = d["top_p"] if req.top_p is None else float(req.top_p)
                top_k = int(d.get("top_k", 0))
                if max_new < 1:
                    raise InvalidInput("max_new_tokens must be at least 1")
                if temperature < 0:
                    raise InvalidInput("temperature must not be negative")
                prompt_ids = self.understanding_ids(req)
                ids = torch.tensor(prompt_ids, dtype=torch.long)
                room = self.max_positions - len(ids)
                if room < 1:
                    raise InvalidInput(
                        f"question or conversation too long: {len(ids)} tokens with the image; "
                        f"the model's context is {self.max_positions}"
                    )
                image = self.processor.image_processor(images=req.image.convert("RGB"),
                                                       return_tensors="pt")
            except Exception as e:
                out.append(e)
                continue
            # Cut the answer budget, not the question, when only the answer does not fit.
            rest = (min(max_new, room), req.seed, temperature, top_p, top_k, prompt_ids)
            pending.append((len(out), ids, image["pixel_values"], rest))
            out.append(None)
        if not pending:
            return out
        # The image tower runs here: its output is part of each job's prompt.
        with torch.inference_mode():
            pixels = torch.cat([p for _, _, p, _ in pending]).to(self.device, self.dtype)
            features = self.model.model.get_image_features(pixels).pooler_output
            for n, (at, ids, _, rest) in enumerate(pending):
                ids = ids.to(self.device)
                embeds = self.model.get_input_embeddings()(ids)
                embeds[ids == self.image_token] = features[n].reshape(-1, embeds.shape[-1])
                out[at] = TextJob(embeds, *rest)
        return out
