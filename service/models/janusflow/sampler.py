"""JanusFlow image generation: a batched rectified-flow ODE, Euler steps, CFG, VAE decode.

Each step, for every row: the generation encoder turns the latent z (C x l x l) and the
time t into a token map and a time embedding; the LLM reads [t_emb, map tokens] after its
prompt; its last hidden states go back through the decoder aligner (+ norm) and the
generation decoder to a velocity v; with guidance g, v = g * v_cond - (g - 1) * v_uncond;
z += v / steps. Time runs 0 -> (steps - 1) / steps, scaled by 1000, as in the published
demo; the SDXL VAE decodes z / scaling_factor at the end.

Batching (one loop, per-row step schedules): each job keeps its own clock; after k of its
N steps it uses t = k / N and it leaves the batch after its N-th step, so jobs with
different `steps`, guidance, image counts and start steps share every LLM call while they
last (the continuous engine, `janusflow.engine`, lets them join between steps).
Rows are laid out as every job's conditional rows, then the unconditional rows of jobs
with guidance != 1 (guidance 1 needs no unconditional pass).

Prefix KV cache: a job's prompt (everything before the time token) never changes across
steps, so its keys/values are computed once, before the first step, and every step feeds
the LLM only the 1 + grid^2 new tokens, attending over the cached prefix (see
`attention`). Unconditional rows see only BOS: the demo masks the rest of their
prompt, so their prefix is the single BOS token, shared by all of them. The published
demo meant to keep such a cache but its copy loop runs over an empty list, so it re-runs
the whole prompt every step; `reuse_prefix_kv=False` does that here (for measurement).
Initial noise comes from a per-job `torch.Generator` seeded with the job's seed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from PIL import Image

from service.models.base import ModelError
from service.models.janusflow.attention import KV, Group, Plan
from service.models.janusflow.modules import JanusFlowModel
from service.models.oom import run_split_on_oom


@dataclass
class FlowJob:
    prompt_ids: list[int]  # BOS + prompt, up to and excluding <begin_of_image>
    num_images: int
    steps: int
    guidance: float
    seed: int
    z: torch.Tensor | None = field(default=None, repr=False)  # (n, C, l, l) float32
    prefix: list[KV] | None = field(default=None, repr=False)
    done: int = 0  # Euler steps taken: the job's own clock (t = done / steps)
    # Previews only: keep the last (guided) velocity, to estimate the clean latent from.
    keep_velocity: bool = False
    velocity: torch.Tensor | None = field(default=None, repr=False)

    @property
    def unconditional(self) -> bool:
        return self.guidance != 1.0


class FlowSampler:
    def __init__(
        self,
        model: JanusFlowModel,
        *,
        latent: int,
        grid: int,
        bos_id: int,
        pad_id: int,
        device: str | torch.device,
        dtype: torch.dtype,
        reuse_prefix_kv: bool = True,
    ) -> None:
        self.model, self.latent, self.grid = model, latent, grid
        self.bos_id, self.pad_id = bos_id, pad_id
        self.device, self.dtype = torch.device(device), dtype
        self.reuse_prefix_kv = reuse_prefix_kv
        self.channels = model.config.gen_enc.input_channels
        self._bos: list[KV] | None = None  # the unconditional rows' prefix, during `advance`

    @property
    def image_tokens(self) -> int:
        return self.grid * self.grid

    # -- pieces ---------------------------------------------------------------------------

    def _embed(self, ids: list[int]) -> torch.Tensor:
        table = self.model.language_model.get_input_embeddings()
        return table(torch.tensor(ids, device=self.device))

    def prefix_kv(self, ids: list[int]) -> list[KV]:
        """Keys/values of every layer for the prompt `ids` at positions 0..len-1."""
        plan = Plan([Group(0, 1)], store={})
        positions = torch.arange(len(ids), device=self.device)[None]
        self.model.language_model.model(
            inputs_embeds=self._embed(ids)[None], position_ids=positions, use_cache=False,
            janusflow_plan=plan,
        )
        assert plan.store is not None
        return [plan.store[i] for i in range(len(plan.store))]

    def noise(self, job: FlowJob) -> torch.Tensor:
        generator = torch.Generator(device="cpu").manual_seed(job.seed)
        shape = (job.num_images, self.channels, self.latent, self.latent)
        return torch.randn(shape, generator=generator, dtype=torch.float32).to(self.device)

    def _llm_inputs(
        self, rows: list[tuple[FlowJob, bool]], tokens: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, Plan]:
        """Embeddings, position ids and attention plan for `tokens` ([t_emb, map], one row
        per (job, conditional?) image) after each row's prompt."""
        new = tokens.shape[1]
        groups: list[Group] = []
        positions, embeds, row = [], [], 0
        longest = max(len(job.prompt_ids) for job, _ in rows)
        uncond_start = None
        for job, cond in rows:
            n, p = job.num_images, len(job.prompt_ids)
            if self.reuse_prefix_kv:
                if cond:
                    groups.append(Group(row, row + n, prefix=job.prefix))
                elif uncond_start is None:
                    uncond_start = row
                positions.append((torch.arange(new, device=self.device) + p).expand(n, -1))
            else:  # the whole prompt again, left-padded to the longest
                pad = longest - p
                ids = job.prompt_ids if cond else [self.bos_id] + [self.pad_id] * (p - 1)
                prompt = self._embed(ids)
                prompt = torch.cat([prompt.new_zeros(pad, prompt.shape[1]), prompt])
                embeds.append(prompt.expand(n, -1, -1))
                pos = torch.arange(p + new, device=self.device)
                positions.append(torch.cat([pos.new_zeros(pad), pos]).expand(n, -1))
                mask = None
                if not cond:  # the demo's mask: BOS and the image tokens, not the prompt
                    mask = torch.ones(p + new, p + new, dtype=torch.bool, device=self.device)
                    mask = mask.tril()
                    mask[:, 1:p] = False
                groups.append(Group(row, row + n, offset=pad, mask=mask))
            row += n
        if uncond_start is not None:
            groups.append(Group(uncond_start, row, prefix=self._bos))
        if embeds:
            tokens = torch.cat([torch.cat(embeds), tokens], dim=1)
        return tokens, torch.cat(positions), Plan(groups)

    def velocity(self, rows: list[tuple[FlowJob, bool]], z: torch.Tensor, t: torch.Tensor):
        m = self.model
        token_map, t_emb = m.vision_gen_enc_model(z, t)
        tokens = m.vision_gen_enc_aligner(token_map.flatten(2).transpose(1, 2))
        tokens = torch.cat([t_emb[:, None], tokens], dim=1)
        embeds, positions, plan = self._llm_inputs(rows, tokens)
        hidden = m.language_model.model(
            inputs_embeds=embeds, position_ids=positions, use_cache=False, janusflow_plan=plan
        ).last_hidden_state[:, -self.image_tokens :]
        hidden = m.vision_gen_dec_aligner(m.vision_gen_dec_aligner_norm(hidden))
        grid_map = hidden.transpose(1, 2).reshape(hidden.shape[0], -1, self.grid, self.grid)
        return m.vision_gen_dec_model(grid_map, token_map, t_emb).float()

    # -- the loop ---------------------------------------------------------------------------

    def start(self, job: FlowJob) -> None:
        """Initial noise and the prompt's prefix keys/values: what a job needs to join."""
        job.z = self.noise(job)
        job.prefix = self.prefix_kv(job.prompt_ids) if self.reuse_prefix_kv else None
        job.done = 0

    def bos_prefix(self) -> list[KV] | None:
        return self.prefix_kv([self.bos_id]) if self.reuse_prefix_kv else None

    def advance(self, active: list[FlowJob], bos: list[KV] | None) -> None:
        """One Euler step of every job in `active`, each at its own time t = done / steps.

        Jobs need not have started together (the continuous engine admits them between
        steps): a row's numbers depend only on its own z, t and prefix."""
        self._bos = bos
        rows = [(j, True) for j in active] + [(j, False) for j in active if j.unconditional]
        z = torch.cat([j.z for j, _ in rows]).to(self.dtype)  # type: ignore[misc]
        t = torch.cat([torch.full((j.num_images,), j.done / j.steps * 1000.0) for j, _ in rows])
        v = self.velocity(rows, z, t.to(self.device))
        cond_at, uncond_at = 0, sum(j.num_images for j in active)
        for job in active:
            n = job.num_images
            vj = v[cond_at : cond_at + n]
            cond_at += n
            if job.unconditional:
                vu = v[uncond_at : uncond_at + n]
                uncond_at += n
                vj = job.guidance * vj - (job.guidance - 1.0) * vu
            if job.keep_velocity:
                job.velocity = vj
            job.z = job.z + vj * (1.0 / job.steps)
            job.done += 1
        self._bos = None


@torch.inference_mode()
def decode_latents(vae, z: torch.Tensor, upsample_to: int | None = None) -> list[Image.Image]:
    """SDXL-VAE decode of (n, 4, l, l) latents to RGB images, as the published demo
    (`demo/app_janusflow.py`) does: clip to [-1, 1], `((x + 1) / 2 * 255).astype(uint8)`,
    which truncates, then (optionally) a Lanczos resize."""
    pixels = vae.decode((z / vae.config.scaling_factor).to(vae.dtype)).sample
    rgb = ((pixels.float().clamp(-1, 1) + 1) / 2 * 255).to(torch.uint8)
    images = [Image.fromarray(a) for a in rgb.permute(0, 2, 3, 1).cpu().numpy()]
    if upsample_to:
        images = [im.resize((upsample_to, upsample_to), Image.LANCZOS) for im in images]
    return images


def decode_job(vae, z: torch.Tensor, chunk: int, upsample_to: int | None) -> list[Image.Image]:
    """One job's latents -> its images, `chunk` per VAE call (bounding the decoder's
    activations); a call out of memory is split, an image that cannot decode alone
    raises `OutOfMemory`."""
    images: list[Image.Image] = []
    for part in z.split(chunk):
        for image in run_split_on_oom(
                lambda rows: decode_latents(vae, torch.stack(rows), upsample_to), list(part)):
            if isinstance(image, ModelError):
                raise image
            images.append(image)
    return images
