"""Batched decode loops for Janus: many jobs, one forward pass per step.

Image generation: every job contributes `num_images` conditional rows and as many
unconditional rows; all conditional rows come first, in job order, then the unconditional
rows in the same order, so classifier-free guidance is one tensor op for the batch. Text
(understanding) has one row per job. Each job keeps its own `torch.Generator`: sampling draws
that job's random numbers from its generator into its own rows, so a job's tokens depend on
its own inputs and seed, never on its neighbours (see `sampling.sample`).

Prompts are prefilled one job at a time, unpadded, and their keys/values copied into the
left-padded batch cache (`lm` describes the layout): a prefill is a small part of a
576-step run, and doing it per job keeps padding out of the prompt arithmetic entirely.
"""

from __future__ import annotations

from typing import Any

import torch

from service.models.base import Canceled, RunControl
from service.models.janus_pro.jobs import ImageJob
from service.models.lm import KVCache, LeanLM
from service.models.sampling import Rows, greedy_rows, sample, top_k_filter, top_p_filter
from service.models.text_engine import TextJob


class JanusDecoder:
    """The image and text loops over a loaded `JanusForConditionalGeneration`."""

    def __init__(
        self, model: Any, lm: LeanLM, num_image_tokens: int, eos_token_id: int, poll_every: int = 1
    ) -> None:
        self.model = model
        self.lm = lm
        self.num_image_tokens = num_image_tokens
        self.eos_token_id = eos_token_id
        # Polling `should_stop` is a host call; on a GPU, checking for finished text rows
        # also syncs. Every `poll_every` steps keeps the device queue full in between.
        self.poll_every = max(1, poll_every)
        # Token ids -> text, for `report_text` (live watchers); set by the runner.
        self.detokenize: Any = None

    def _generator(self, seed: int) -> torch.Generator:
        return torch.Generator(device=self.lm.device).manual_seed(seed)

    def _prefill_into(
        self, cache: KVCache, ids_or_embeds: torch.Tensor, rows: list[slice], width: int
    ) -> torch.Tensor:
        """Prefill one job's distinct prompts and copy them into `rows` of the cache."""
        embeds = ids_or_embeds
        if embeds.dtype == torch.long:
            embeds = self.lm.embed_tokens(embeds)
        last, kv = self.lm.prefill(embeds.to(self.lm.dtype))
        length = embeds.shape[1]
        for i, rs in enumerate(rows):
            # One prompt row's keys/values broadcast over all its image rows.
            cache.kv[:, :, rs, :, width - length : width] = kv[:, :, i : i + 1]
            cache.mask[rs, :, :, width - length : width] = True
        return last

    # -- images ------------------------------------------------------------------------

    def image_tokens(
        self, jobs: list[ImageJob], control: RunControl
    ) -> list[torch.Tensor | Canceled]:
        """(num_images, num_image_tokens) tokens per job, or Canceled."""
        lm, device, steps = self.lm, self.lm.device, self.num_image_tokens
        rows = Rows([j.num_images for j in jobs])
        n = rows.total()
        width = max(len(j.cond_ids) for j in jobs)
        # The last sampled token is never fed back, hence `steps - 1` decode columns.
        cache = lm.new_cache(2 * n, width + steps - 1)
        hidden = torch.empty(2 * n, lm.hidden, dtype=lm.dtype, device=device)
        positions = torch.empty(2 * n, dtype=torch.long, device=device)
        for k, start, end in rows.spans():
            job = jobs[k]
            ids = torch.stack([job.cond_ids, job.uncond_ids]).to(device)
            cond, uncond = slice(start, end), slice(n + start, n + end)
            last = self._prefill_into(cache, ids, [cond, uncond], width)
            hidden[cond], hidden[uncond] = last[0], last[1]
            positions[cond] = positions[uncond] = ids.shape[1]

        def per_row(values: list[float]) -> torch.Tensor:
            out = [v for k, s, e in rows.spans() for v in [values[k]] * (e - s)]
            return torch.tensor(out, dtype=torch.float32, device=device)[:, None]

        guidance = per_row([j.guidance for j in jobs])
        # Greedy rows divide by 1 (and take the argmax of the guided logits).
        temperature = per_row([j.temperature if j.temperature > 0 else 1.0 for j in jobs])
        generators = [self._generator(j.seed) if j.temperature > 0 else None for j in jobs]
        uniform = torch.zeros(n, 1, dtype=torch.float32, device=device)
        greedy = greedy_rows(jobs, rows, device)
        tokens = torch.empty(n, steps, dtype=torch.long, device=device)
        results: list[torch.Tensor | Canceled | None] = [None] * len(jobs)
        units = [j.units for j in jobs]
        head = self.model.model.generation_head
        embed = self.model.prepare_embeddings_for_image_generation

        for step in range(steps):
            scores = self._guided_logits(head, hidden, n, guidance) / temperature
            token = sample(scores, rows.spans(), generators, uniform, greedy)
            tokens[:, step] = token
            if step == steps - 1:
                break
            if step % self.poll_every == 0:
                keep = self._poll(jobs, rows, control, step + 1, results, units)
                if keep is not None:
                    if not rows.live:
                        break
                    n = rows.total()
                    row_index = torch.tensor(keep, device=device)
                    both = torch.cat([row_index, row_index + len(tokens)])
                    cache.keep(both)
                    positions = positions.index_select(0, both)
                    token, tokens = token[row_index], tokens[row_index]
                    guidance, temperature = guidance[row_index], temperature[row_index]
                    uniform = uniform[row_index]
                    greedy = greedy_rows(jobs, rows, device)
            column = width + step
            cache.mask[..., column] = True
            x = embed(token[:, None])
            hidden = lm.step(torch.cat([x, x]), lm.rope_at(positions[:, None]), cache, column)
            positions += 1

        for k, start, end in rows.spans():
            results[k] = tokens[start:end]
        return [r if r is not None else Canceled("canceled") for r in results]

    @staticmethod
    def _guided_logits(
        head: Any, hidden: torch.Tensor, n: int, guidance: torch.Tensor
    ) -> torch.Tensor:
        """DeepSeek's guidance, uncond + w * (cond - uncond), over the full codebook (no top-k).

        The head is proj_out -> activation -> vision_head, and the last layer is affine, so
        mixing the activations before it gives the same logits for half the rows through
        the head's largest matrix (hidden x codebook) -- a third of a small model's step.
        """
        act = head.activation_fn(head.proj_out(hidden)).float()
        cond, uncond = act[:n], act[n:]
        mixed = (uncond + (cond - uncond) * guidance).to(hidden.dtype)
        return head.vision_head(mixed).float()

    def _poll(
        self,
        jobs: list[Any],
        rows: Rows,
        control: RunControl,
        done: int,
        results: list[Any],
        units: list[int],
        finished: list[bool] | None = None,
    ) -> list[int] | None:
        """Report progress and drop stopped (or finished) jobs.

        Returns None when every job stays, else the row indices that stay (maybe none).
        """
        keep: list[int] = []
        leaving: set[int] = set()
        for k, start, end in rows.spans():
            index = jobs[k].index
            if control.should_stop(index):
                results[k] = Canceled("canceled")
                leaving.add(k)
            elif finished is not None and finished[k]:
                leaving.add(k)
            else:
                control.report_progress(index, min(done / units[k], 1.0), done, units[k])
                keep.extend(range(start, end))
        if not leaving:
            return None
        rows.live = [k for k in rows.live if k not in leaving]
        return keep

    # -- text --------------------------------------------------------------------------

    def text_tokens(self, jobs: list[TextJob], control: RunControl) -> list[list[int] | Canceled]:
        """New token ids per job (EOS excluded), or Canceled."""
        lm, device = self.lm, self.lm.device
        rows = Rows([1] * len(jobs))
        n = len(jobs)
        width = max(j.embeds.shape[0] for j in jobs)
        longest = max(j.max_new_tokens for j in jobs)
        cache = lm.new_cache(n, width + longest - 1)
        hidden = torch.empty(n, lm.hidden, dtype=lm.dtype, device=device)
        positions = torch.empty(n, dtype=torch.long, device=device)
        for k, job in enumerate(jobs):
            hidden[k] = self._prefill_into(cache, job.embeds[None], [slice(k, k + 1)], width)[0]
            positions[k] = job.embeds.shape[0]

        def per_row(values: list[float]) -> torch.Tensor:
            return torch.tensor(values, dtype=torch.float32, device=device)[:, None]

        temperature = per_row([j.temperature if j.temperature > 0 else 1.0 for j in jobs])
        top_p = per_row([j.top_p if j.temperature > 0 else 1.0 for j in jobs])
        top_k = torch.tensor(
            [j.top_k if j.temperature > 0 else 0 for j in jobs], dtype=torch.long, device=device
        )[:, None]
        units = [j.max_new_tokens for j in jobs]
        use_top_p = any(j.temperature > 0 and j.top_p < 1.0 for j in jobs)
        use_top_k = any(j.temperature > 0 and j.top_k > 0 for j in jobs)
        generators = [self._generator(j.seed) if j.temperature > 0 else None for j in jobs]
        lm_head = self.model.lm_head
        uniform = torch.zeros(n, 1, dtype=torch.float32, device=device)
        greedy = greedy_rows(jobs, rows, device)
        tokens = torch.empty(n, longest, dtype=torch.long, device=device)
        results: list[Any] = [None] * n
        texts: list[list[int]] = [[] for _ in jobs]
        ended = [False] * n
        checked = 0

        for step in range(longest):
            # transformers' order, which the reference samples under: temperature, top-k, top-p.
            scores = lm_head(hidden).float() / temperature
            if use_top_k:
                scores = top_k_filter(scores, top_k)
            if use_top_p:
                scores = top_p_filter(scores, top_p)
            tokens[:, step] = sample(scores, rows.spans(), generators, uniform, greedy)
            last = step == longest - 1
            if step % self.poll_every and not last:
                token = tokens[:, step]
            else:
                # One host copy of the tokens since the last check (a sync on a GPU).
                fresh = tokens[:, checked : step + 1].tolist()
                checked = step + 1
                for (k, _, _), row in zip(rows.spans(), fresh, strict=True):
                    for t in row:
                        if ended[k]:
                            break
                        if t == self.eos_token_id:
                            ended[k] = True
                        else:
                            texts[k].append(t)
                            ended[k] = len(texts[k]) >= jobs[k].max_new_tokens
                    if self.detokenize is not None and row:  # the answer so far, live
                        control.report_text(jobs[k].index, self.detokenize(texts[k]))
                keep = self._poll(jobs, rows, control, step + 1, results, units, ended)
                if last or (keep is not None and not rows.live):
                    break
                token = tokens[:, step]
                if keep is not None:
                    index = torch.tensor(keep, device=device)
                    cache.keep(index)
                    positions, tokens = positions[index], tokens[index]
                    token, uniform = token[index], uniform[index]
                    greedy = greedy_rows(jobs, rows, device)
                    temperature, top_p = temperature[index], top_p[index]
                    top_k = top_k[index]
            col = width + step
            cache.mask[..., col] = True
            x = lm.embed_tokens(token[:, None])
            hidden = lm.step(x, lm.rope_at(positions[:, None]), cache, col)
            positions += 1

        return [r if r is not None else texts[k] for k, r in enumerate(results)]
