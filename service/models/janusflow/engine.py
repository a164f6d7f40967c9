"""JanusFlow generation, continuous: jobs join the running ODE between Euler steps.

Each job carries its own clock (`FlowJob.done`), noise and prompt prefix, so a job that
joins at step 200 of another simply runs its own t = 0, 1/N, ... alongside; the sampler's
`advance` already handles per-row times. A finished job leaves at once; its latents are
VAE-decoded inside the `step` that finished them, or, when the caller set `defer`, by the
caller (a `Deferred`).
"""

from __future__ import annotations

import time
from functools import partial
from typing import TYPE_CHECKING, Any

import torch
from PIL import Image

from service.models.base import (
    Canceled,
    GenerateRequest,
    GenerateResult,
    ModelError,
    OutOfMemory,
    RunControl,
)
from service.models.engine import Deferred, EngineBase, Finished, Key
from service.models.janusflow.attention import KV
from service.models.janusflow.sampler import FlowJob, decode_latents
from service.models.preview import due, flow_every, thumbnail

if TYPE_CHECKING:
    from service.models.janusflow.runner import JanusFlowRunner


class FlowEngine(EngineBase):
    request_type = GenerateRequest

    def __init__(self, runner: JanusFlowRunner, slots: int) -> None:
        super().__init__("generate", slots)
        self.runner = runner
        self.sampler = runner.sampler
        assert self.sampler is not None, "load() the runner first"
        self.jobs: dict[Key, FlowJob] = {}
        self.started: dict[Key, float] = {}
        self._bos: list[KV] | None = None  # the unconditional rows' shared prefix
        self.steps_run = 0
        self.shown: dict[Key, int] = {}  # previews: the step of each row's last one

    def _rows(self) -> dict[Key, Any]:
        return self.jobs

    def _prepare(self, key: Key, request: GenerateRequest) -> FlowJob:
        job = self.runner.flow_job(request)
        self.sampler.start(job)  # type: ignore[union-attr]
        if job.unconditional and self._bos is None:
            self._bos = self.sampler.bos_prefix()  # type: ignore[union-attr]
        job.keep_velocity = request.preview
        self.started[key] = time.monotonic()
        return job

    def drop(self, key: Key) -> bool:
        job = self.jobs.pop(key, None)
        self.started.pop(key, None)
        if job is None:
            return False
        job.z = job.prefix = job.velocity = None
        self.shown.pop(key, None)
        return True

    def progress(self) -> dict[Key, tuple[int, int]]:
        # The VAE decode is the last share of a job's progress.
        return {k: (j.done, j.steps + 1) for k, j in self.jobs.items()}

    @torch.inference_mode()
    def previews(self, every: int) -> dict[Key, Image.Image]:
        out: dict[Key, Image.Image] = {}
        for key, job in self.jobs.items():
            if job.velocity is None or job.z is None:
                continue
            if due(job.done, self.shown.get(key, 0), flow_every(every, job.steps), job.steps):
                self.shown[key] = job.done
                out[key] = self._preview(job)
        return out

    def _preview(self, job: FlowJob) -> Image.Image:
        """The first image's current estimate of its clean latent. The sampler's clock runs
        from t = 0 (noise) to t = 1 (clean), z += v / steps, so after `done` steps with last
        velocity v: x0 = z + (1 - done / steps) * v. A new tensor; z is only read."""
        z, v = job.z[:1].float(), job.velocity[:1].float()  # type: ignore[index]
        x0 = z + (1.0 - job.done / job.steps) * v
        return thumbnail(decode_latents(self.runner.vae, x0)[0])

    @torch.inference_mode()
    def step(self) -> Finished:
        if not self.jobs:
            return []
        started = time.monotonic()
        stepping = len(self.jobs)  # the jobs of this step, those that leave in it too
        failed = self._advance(list(self.jobs.items()))
        step_seconds = time.monotonic() - started
        self.steps_run += 1
        out: Finished = []
        for key, error in failed:
            self.drop(key)
            out.append((key, error))
        for key, job in list(self.jobs.items()):
            if job.done < job.steps:
                continue
            stats = {"prompt_tokens": len(job.prompt_ids), "steps": job.steps,
                     "guidance": job.guidance, "batch_jobs": stepping,
                     "step_seconds": step_seconds}
            decode = Deferred(partial(self._decode, job.z, stats, self.started[key]))
            self.drop(key)  # the latents live on in `decode` alone
            out.append((key, decode if self.defer else decode.finish()))
        return out

    def _decode(self, z: torch.Tensor, stats: dict[str, Any], started: float,
                control: RunControl) -> GenerateResult | Canceled:
        if control.should_stop(0):  # canceled between its last step and its decode
            return Canceled("canceled")
        decode_started = time.monotonic()
        images = self.runner.decode(z)
        now = time.monotonic()
        return GenerateResult(images=images, stats={
            **stats, "vae_seconds": round(now - decode_started, 3),
            "seconds": round(now - started, 3)})

    def _advance(self, items: list[tuple[Key, FlowJob]]) -> list[tuple[Key, ModelError]]:
        """One step of these jobs; out of memory splits them (a step of each half is the
        same step: rows never depend on each other), only a job that cannot step alone
        fails."""
        message = ""
        try:
            self.sampler.advance([j for _, j in items], self._bos)  # type: ignore[union-attr]
            return []
        except torch.OutOfMemoryError as e:
            message = str(e).splitlines()[0] if str(e) else "out of memory"
        if self.runner.device.startswith("cuda"):  # outside the except: its frames are gone
            torch.cuda.empty_cache()
        if len(items) == 1:
            return [(items[0][0], OutOfMemory(message))]
        half = len(items) // 2
        return self._advance(items[:half]) + self._advance(items[half:])
