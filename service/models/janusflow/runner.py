"""JanusFlow-1.3B: our own runner over the published `deepseek-ai/JanusFlow-1.3B` weights.

Understanding: SigLIP-L/16 at 384 px -> aligner -> Llama writes the answer, sampled like
the published demo (temperature 0.1, top-p 0.95, at most 512 new tokens by default) and
seeded per job, on the continuous text engine (`understand`), whose decode runs the
Llama's weights through `lm.LeanLM` as Janus-Pro's does. Generation: the continuous
rectified-flow engine (`engine`) over `sampler`'s ODE step and SDXL-VAE decode.
Loading: `load` (strict, by key).

The VAE is not part of the checkpoint: it comes from `vae_path` (the worker passes the
`JANUS_VAE_PATH` setting; default `stabilityai/sdxl-vae`), except that a checkpoint
directory with its own `vae/` (the tiny test checkpoints) uses that.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
from PIL import Image

from service.models import catalog
from service.models.base import GenerateRequest, InvalidInput, ModelRunner, UnderstandRequest
from service.models.invariance import make_batch_invariant
from service.models.janusflow.attention import ATTN_IMPLEMENTATION, ATTN_INVARIANT
from service.models.janusflow.config import BOI, BOS, EOI, EOS, IMAGE, PAD, SPECIAL_TOKENS
from service.models.janusflow.load import (
    DEFAULT_VAE,
    WeightsError,
    load_model,
    load_tokenizer,
    load_vae,
    read_image_settings,
    resolve_dir,
    vae_factor,
    vae_source,
)
from service.models.janusflow.sampler import FlowJob, FlowSampler, decode_job
from service.models.lm import LeanLM
from service.models.prompts import JANUSFLOW_FORMAT

DECODE_CHUNK = 4  # images per VAE call: bounds the decoder's activation peak
UPSAMPLED_SIZE = 1024  # what the published demo resizes its 384 px images to


class JanusFlowRunner(ModelRunner):
    family = catalog.JANUSFLOW
    tasks = catalog.tasks_of(catalog.JANUSFLOW)

    def __init__(
        self,
        path: str,
        device: str = "cpu",
        *,
        vae_path: str | None = None,
        upsample_1024: bool = False,
        reuse_prefix_kv: bool = True,
        batch_invariant: bool | None = None,
    ) -> None:
        super().__init__(path, device)
        self.vae_path = vae_path or DEFAULT_VAE
        self.upsample_1024 = upsample_1024
        self.reuse_prefix_kv = reuse_prefix_kv
        self.dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
        # None: on for CPUs (measured cost in bench/RESULTS.md), off for GPUs until measured.
        cpu = not device.startswith("cuda")
        self.batch_invariant = cpu if batch_invariant is None else batch_invariant
        self.model: Any = None
        self.vae: Any = None
        self.tokenizer: Any = None
        self.sampler: FlowSampler | None = None
        self.lm: LeanLM | None = None  # the Llama's decode for understanding
        self.image_size = 384
        self.max_positions = 16384
        self.images: Any = None  # ImageSettings
        self.ids: dict[str, int] = {}
        self._specials: list[str] = []

    # -- loading ----------------------------------------------------------------------

    def attention(self) -> str:
        """The Llama's attention implementation. On a CPU the invariant mode's avoids
        SDPA's kernel, which splits one query's keys between threads (`invariance`)."""
        cpu = not self.device.startswith("cuda")
        return ATTN_INVARIANT if self.batch_invariant and cpu else ATTN_IMPLEMENTATION

    def make_invariant(self, model: Any, vae: Any) -> None:
        """In the invariant mode, per-row products in both. A job's images decode in calls
        of their own anyway; per image (and with pointwise convolutions as products) an
        image's bits depend neither on how many the job asked for nor on the threads."""
        if self.batch_invariant:
            make_batch_invariant(model)
            make_batch_invariant(vae)

    def load(self) -> None:
        directory = resolve_dir(self.path)
        self.model = load_model(directory, self.dtype, self.device, self.attention())
        self.vae = load_vae(vae_source(directory, self.vae_path), self.dtype, self.device)
        self.make_invariant(self.model, self.vae)
        self.tokenizer = load_tokenizer(directory)
        config = self.model.config
        if self.vae.config.latent_channels != config.gen_enc.input_channels:
            raise WeightsError(
                f"the VAE has {self.vae.config.latent_channels} latent channels, the "
                f"generation encoder reads {config.gen_enc.input_channels}"
            )
        latent, grid = config.latent_grid(vae_factor(self.vae))
        self.image_size = config.image_size
        self.max_positions = self.model.language_model.config.max_position_embeddings
        self.images = read_image_settings(directory, config.und.image_size)
        for token in (BOS, EOS, PAD, IMAGE, BOI, EOI):
            token_id = self.tokenizer.token_to_id(token)
            if token_id is None:
                raise WeightsError(f"the tokenizer has no {token!r}")
            self.ids[token] = token_id
        added = self.tokenizer.get_added_tokens_decoder().values()
        specials = {t.content for t in added if t.special} | set(SPECIAL_TOKENS)
        self._specials = sorted(specials, key=len, reverse=True)  # longest first
        # Fuses the Llama's q/k/v and gate/up weights into views: the sampler's
        # transformers forward runs on the same memory, unchanged.
        self.lm = LeanLM(self.model.language_model.model, batch_invariant=self.batch_invariant)
        self.sampler = FlowSampler(
            self.model, latent=latent, grid=grid, bos_id=self.ids[BOS], pad_id=self.ids[PAD],
            device=self.device, dtype=self.dtype, reuse_prefix_kv=self.reuse_prefix_kv,
        )

    def defaults(self) -> dict[str, dict[str, Any]]:
        values = catalog.defaults_of(self.family)
        values["generate"]["image_size"] = (
            UPSAMPLED_SIZE if self.upsample_1024 else self.image_size
        )
        return values

    def warm_decode(self) -> None:
        sampler = self.sampler
        assert sampler is not None, "load() the runner first"
        self.decode(torch.zeros(1, sampler.channels, sampler.latent, sampler.latent,
                                device=self.device))

    # -- helpers ----------------------------------------------------------------------

    def clean(self, text: str) -> str:
        # User text must not smuggle in control tokens (an image placeholder, a fake turn).
        for token in self._specials:
            text = text.replace(token, "")
        return text.strip()

    def encode(self, text: str) -> list[int]:
        # BOS by hand: the result must not depend on the tokenizer file's post-processor.
        return [self.ids[BOS]] + self.tokenizer.encode(text, add_special_tokens=False).ids

    def generation_ids(self, prompt: str) -> list[int]:
        """BOS + the prompt up to, not including, <｜begin▁of▁generation｜>: the reference
        tokenizes the prompt with that tag (a token of its own, added by the processor if
        the tokenizer lacks it) and replaces the tag's embedding by the time step's."""
        return self.encode(JANUSFLOW_FORMAT.conversation(self.clean(prompt)))

    def understanding_ids(self, req: UnderstandRequest) -> list[int]:
        """BOS + the job's prompt (system prompt + question, or its conversation), its one
        image placeholder still unexpanded. The one place a JanusFlow understanding prompt
        is rendered."""
        messages = [replace(m, content=self.clean(m.content)) for m in req.messages]
        return self.encode(JANUSFLOW_FORMAT.understanding(self.clean(req.question), messages))

    # -- generate ---------------------------------------------------------------------

    def flow_job(self, req: GenerateRequest) -> FlowJob:
        """A generation request checked and tokenized (its error refuses it alone)."""
        d = self.defaults()["generate"]
        steps = d["steps"] if req.steps is None else int(req.steps)
        guidance = d["guidance"] if req.guidance is None else float(req.guidance)
        if req.num_images < 1:
            raise InvalidInput("num_images must be at least 1")
        if steps < 1:
            raise InvalidInput("steps must be at least 1")
        if guidance < 0:
            raise InvalidInput("guidance must not be negative")
        ids = self.generation_ids(req.prompt)
        room = self.max_positions - 1 - self.sampler.image_tokens  # type: ignore[union-attr]
        if len(ids) > room:
            raise InvalidInput(f"prompt too long: {len(ids)} tokens; at most {room} fit")
        return FlowJob(ids, req.num_images, steps, guidance, int(req.seed))

    def decode(self, z: torch.Tensor) -> list[Image.Image]:
        """Final latents of one job -> its images, a few per VAE call (a call out of
        memory is split; an image that cannot decode alone raises `OutOfMemory`)."""
        return decode_job(self.vae, z, DECODE_CHUNK,
                          UPSAMPLED_SIZE if self.upsample_1024 else None)

    def slot_bytes(self) -> int:
        """Memory of one engine slot (docs/OPERATIONS.md, "Sizing"): a single-image guided
        job is 2 rows of (1 + grid^2) tokens through the LLM every step. Per row: the
        layer's activations (4 x hidden + 3 x intermediate values per token, one layer
        live at a time), fp32 attention scores (heads x tokens x (prompt + tokens)), and
        the job's prompt prefix KV (prompt budget x every layer's keys and values). Or an
        understanding row (prompt budget + image patches + 512 answer tokens of KV, plus
        25% for the step), whichever is larger: for the published model, that one."""
        from service.models.engine import SIZING_PROMPT_TOKENS, kv_bytes_per_token

        cfg = self.model.language_model.config
        size = self.dtype.itemsize
        tokens = 1 + self.sampler.image_tokens  # type: ignore[union-attr]
        activations = tokens * (4 * cfg.hidden_size + 3 * cfg.intermediate_size) * size
        scores = cfg.num_attention_heads * tokens * (SIZING_PROMPT_TOKENS + tokens) * 4
        head_dim = cfg.hidden_size // cfg.num_attention_heads
        kv_heads = cfg.num_key_value_heads or cfg.num_attention_heads
        per_token = kv_bytes_per_token(cfg.num_hidden_layers, kv_heads, head_dim, size)
        generation = 2 * (activations + scores) + SIZING_PROMPT_TOKENS * per_token
        text = (SIZING_PROMPT_TOKENS + self.model.config.und.num_patches + 512) * per_token
        return int(max(generation, 1.25 * text))

    def open_engine(self, task: str, slots: int) -> Any:
        """Continuous batching for both tasks: the ODE (`janusflow.engine`) and the text
        engine every family shares (`janusflow.understand`)."""
        if task == "generate":
            from service.models.janusflow.engine import FlowEngine

            return FlowEngine(self, slots)
        from service.models.janusflow.understand import FlowTextEngine

        return FlowTextEngine(self, slots)
