"""JanusFlow understanding: image + question -> text, on the continuous text engine.

The prompt is DeepSeek's SFT format with the processor's system prompt and
"<image_placeholder>\\n{question}" as the user turn, or the job's conversation
(`JanusFlowRunner.understanding_ids`). The placeholder becomes
<begin_of_image>, one <image_placeholder> per SigLIP patch, <end_of_image>; the
begin-of-image position and the patches take `JanusFlowModel.image_features` (the learned
begin-of-understanding embedding, then the aligned SigLIP features), computed once for
the jobs admitted together. The Llama then samples the answer as DeepSeek's demo does
(`generate` on input embeddings after `torch.manual_seed(seed)`): transformers'
temperature, top-k, top-p, then `torch.multinomial`, here from each job's own generator
(`sampling.multinomial`), so a job's answer depends only on its request and seed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from service.models.base import InvalidInput, UnderstandRequest
from service.models.engine import Key
from service.models.janusflow.config import BOI, EOI, EOS, IMAGE
from service.models.janusflow.load import ImageSettings
from service.models.text_engine import TextEngine, TextJob

if TYPE_CHECKING:
    from service.models.janusflow.runner import JanusFlowRunner


@dataclass
class _Question:
    """A request checked and tokenised, its image as pixels: waiting for the tower."""

    ids: list[int]  # the prompt, its image placeholder expanded
    at: int  # where the image's positions start (<begin_of_image>)
    pixels: torch.Tensor  # (1, 3, S, S) float32
    max_new_tokens: int
    seed: int
    temperature: float
    top_p: float
    top_k: int


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


def question(runner: JanusFlowRunner, req: UnderstandRequest) -> _Question:
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
    # top_k 50 was transformers 4.x's default, under which the published demo sampled.
    return _Question(ids, at, image_tensor(runner.images, req.image), max_new, int(req.seed),
                     temperature, top_p, int(d.get("top_k", 0)))


def text_jobs(runner: JanusFlowRunner, questions: list[_Question]) -> list[TextJob]:
    """The tower (SigLIP and aligner) once over all the questions' images, each job's
    prompt embeddings with its features in place."""
    pixels = torch.cat([q.pixels for q in questions]).to(runner.device, runner.dtype)
    features = runner.model.image_features(pixels)  # (n, 1 + patches, hidden)
    embed = runner.model.language_model.get_input_embeddings()
    jobs = []
    for q, feats in zip(questions, features, strict=True):
        embeds = embed(torch.tensor(q.ids, device=runner.device))
        embeds[q.at : q.at + feats.shape[0]] = feats
        jobs.append(TextJob(embeds, q.max_new_tokens, q.seed, q.temperature, q.top_p,
                            q.top_k, q.ids))
    return jobs


class FlowTextEngine(TextEngine):
    def __init__(self, runner: JanusFlowRunner, slots: int) -> None:
        assert runner.lm is not None, "load() the runner first"
        super().__init__(runner.lm, slots, head=runner.model.language_model.lm_head,
                         eos=runner.ids[EOS], tokenizer=runner.tokenizer,
                         per_row=runner.batch_invariant, multinomial=True)
        self.runner = runner

    def _prepare(self, key: Key, request: UnderstandRequest) -> _Question:
        return question(self.runner, request)

    def _jobs(self, ready: list[Any]) -> list[TextJob | Exception]:
        return list(text_jobs(self.runner, ready))
