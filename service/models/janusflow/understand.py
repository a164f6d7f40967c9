"""JanusFlow understanding: image + question -> text, one job at a time.

The prompt is DeepSeek's SFT format with the processor's system prompt and
"<image_placeholder>\\n{question}" as the user turn, or the job's conversation
(`JanusFlowRunner.understanding_ids`). The placeholder becomes
<begin_of_image>, one <image_placeholder> per SigLIP patch, <end_of_image>; the
begin-of-image position and the patches take `JanusFlowModel.image_features` (the learned
begin-of-understanding embedding, then the aligned SigLIP features). The Llama then
samples the answer (`generate` on input embeddings) after `torch.manual_seed(seed)`.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image
from transformers import StoppingCriteria, StoppingCriteriaList

from service.models.base import InvalidInput, RunControl, UnderstandRequest, UnderstandResult
from service.models.janusflow.config import BOI, BOS, EOI, EOS, IMAGE
from service.models.janusflow.load import ImageSettings

if TYPE_CHECKING:
    from service.models.janusflow.runner import JanusFlowRunner


class Stop(Exception):
    """Raised from inside `generate` to abandon a job the control wants stopped."""


class StepHook(StoppingCriteria):
    """Called once per new token: checks for cancellation, reports progress, never stops."""

    def __init__(self, control: RunControl, index: int, total: int, decode: Any = None) -> None:
        self.control, self.index, self.total, self.done = control, index, max(total, 1), 0
        self.decode = decode  # token ids -> text, for live watchers

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
        if self.control.should_stop(self.index):
            raise Stop
        self.done += 1
        self.control.report_progress(self.index, min(self.done / self.total, 1.0),
                                     self.done, self.total)
        if self.decode is not None:  # inputs_embeds only: input_ids holds the new tokens
            self.control.report_text(self.index, self.decode(input_ids[0].tolist()))
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


def image_tensor(s: ImageSettings, image: Image.Image) -> torch.Tensor:
    """(1, 3, S, S) float32: longest side to S (bicubic), centred on a square of the
    background colour, rescaled (to [0, 1]) and normalised."""
    image = image.convert("RGB")
    w, h = image.size
    side = max(w, h)
    size = (max(int(w / side * s.image_size), s.min_size),
            max(int(h / side * s.image_size), s.min_size))
    image = image.resize(size, Image.BICUBIC)
    square = max(size)
    canvas = Image.new("RGB", (square, square), s.background)
    canvas.paste(image, ((square - size[0]) // 2, (square - size[1]) // 2))
    if square != s.image_size:
        canvas = canvas.resize((s.image_size, s.image_size), Image.BICUBIC)
    x = torch.from_numpy(np.asarray(canvas).copy()).permute(2, 0, 1).float() * s.rescale_factor
    if s.normalize and s.mean is not None:
        mean, std = torch.tensor(s.mean).view(3, 1, 1), torch.tensor(s.std).view(3, 1, 1)
        x = (x - mean) / std
    return x[None]


def understand_one(
    runner: JanusFlowRunner, index: int, req: UnderstandRequest, control: RunControl
) -> UnderstandResult:
    started = time.monotonic()
    d = runner.defaults()["understand"]
    max_new = d["max_new_tokens"] if req.max_new_tokens is None else int(req.max_new_tokens)
    temperature = d["temperature"] if req.temperature is None else float(req.temperature)
    top_p = d["top_p"] if req.top_p is None else float(req.top_p)
    if max_new < 1:
        raise InvalidInput("max_new_tokens must be at least 1")

    ids_of = runner.ids
    ids = runner.understanding_ids(req)
    at = ids.index(ids_of[IMAGE])
    patches = runner.model.config.und.num_patches
    image_ids = [ids_of[BOI]] + [ids_of[IMAGE]] * patches + [ids_of[EOI]]
    ids = ids[:at] + image_ids + ids[at + 1 :]
    room = runner.max_positions - len(ids)
    if room < 1:
        raise InvalidInput(
            f"question or conversation too long: {len(ids)} tokens with the image; "
            f"the model's context is {runner.max_positions}"
        )
    max_new = min(max_new, room)  # cut the answer budget, not the question

    device, lm = runner.device, runner.model.language_model
    embeds = lm.get_input_embeddings()(torch.tensor([ids], device=device))
    pixels = image_tensor(runner.images, req.image).to(device, runner.dtype)
    embeds[0, at : at + 1 + patches] = runner.model.image_features(pixels)[0]

    sampling: dict[str, Any] = {"do_sample": temperature > 0}
    if temperature > 0:
        # top_k 50 was transformers 4.x's default, under which the published demo sampled.
        sampling.update(temperature=temperature, top_p=top_p, top_k=int(d.get("top_k", 0)))
    torch.manual_seed(req.seed)
    out = lm.generate(
        inputs_embeds=embeds,
        attention_mask=torch.ones(embeds.shape[:2], dtype=torch.long, device=device),
        max_new_tokens=max_new,
        pad_token_id=ids_of[EOS],
        bos_token_id=ids_of[BOS],
        eos_token_id=ids_of[EOS],
        stopping_criteria=StoppingCriteriaList([StepHook(
            control, index, max_new,
            lambda ids: runner.tokenizer.decode(ids, skip_special_tokens=True))]),
        **sampling,
    )
    new_tokens = out[0].tolist()  # the sampled tokens, an ending EOS included
    answer = runner.tokenizer.decode(new_tokens, skip_special_tokens=True).strip()
    control.report_progress(index, 1.0)  # an early end-of-sentence finishes the job too
    stopped = bool(new_tokens) and new_tokens[-1] == ids_of[EOS]
    return UnderstandResult(
        text=answer,
        stats={
            "prompt_tokens": len(ids),
            "new_tokens": len(new_tokens),
            "seconds": round(time.monotonic() - started, 3),
        },
        prompt_tokens=len(ids),
        completion_tokens=len(new_tokens),
        finish_reason="stop" if stopped else "length",
    )
