"""What a worker does with one message: claim, run the model, store outputs, finish.

The message is only a wake-up carrying a job id. The job is claimed in SQL
(with a lease), compatible queued jobs may join it in one batch, outputs are
written under the job's own keys, and the terminal state is committed last.
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from service.core.db import session_scope
from service.core.events import EventLog
from service.core.images import open_rgb
from service.core.logs import job_fields, log_context
from service.core.settings import Settings
from service.core.storage import Storage, StorageError
from service.core.tables import Job, utcnow
from service.lifecycle import claims
from service.lifecycle.status import JobStatus, deadline_error
from service.models.base import (
    Canceled,
    GenerateRequest,
    GenerateResult,
    InvalidInput,
    ModelError,
    ModelRunner,
    Turn,
    UnderstandRequest,
    UnderstandResult,
)
from service.workers import metrics as worker_metrics
from service.workers.lease import LeaseKeeper

log = logging.getLogger(__name__)


class TransientError(Exception):
    """Storage or database trouble worth retrying the message for."""


@dataclass
class Executor:
    settings: Settings
    sessions: sessionmaker[Session]
    storage: Storage
    runner: ModelRunner
    model_id: str
    worker_id: str
    max_batch: int = 1
    # Publishes one wake-up for this model. Set by the worker; the executor only
    # decides when (see `_keep_draining`).
    wake: Callable[[], None] | None = None
    events: EventLog | None = None  # live job events (progress, text); set by the worker

    def run(self, job_id: str) -> None:
        try:
            batch = self._claim(job_id)
        except OperationalError as exc:
            raise TransientError(f"database: {exc}") from exc
        if not batch:
            return
        started = time.monotonic()
        try:
            with log_context(**job_fields([job.id for job in batch])):
                self._run_batch(batch, started)
        except (StorageError, OperationalError) as exc:
            self._release([job.id for job in batch])
            raise TransientError(str(exc)) from exc
        self._keep_draining()

    def _keep_draining(self) -> None:
        """Publish the next wake-up while queued jobs remain.

        A bulk upload publishes only a few wake-ups, not one per line; each run
        that leaves work behind passes the baton, so the chain drains the queue.
        """
        if self.wake is None:
            return
        try:
            with session_scope(self.sessions) as session:
                more = claims.has_queued(session=session, model=self.model_id)
        except OperationalError:
            more = True  # can't tell: a spare wake-up costs one empty claim
        if more:
            self.wake()

    # -- claiming ---------------------------------------------------------------
    def _claim(self, job_id: str, limit: int | None = None) -> list[Job]:
        """Claim up to `limit` (default `max_batch`) queued jobs; those whose deadline has
        passed are finished canceled here and not returned."""
        s = self.settings
        with session_scope(self.sessions) as session:
            claimed = claims.claim_next(
                session=session,
                model=self.model_id,
                worker_id=self.worker_id,
                lease_seconds=s.lease_seconds,
                limit=self.max_batch if limit is None else limit,
            )
        if not claimed:
            if job_id:
                log.info("message %s: no queued job left for %s", job_id, self.model_id)
            return []
        batch = []
        for job in claimed:
            if job.deadline_at is not None and job.deadline_at <= utcnow():
                self._finish(job.id, JobStatus.CANCELED, error=deadline_error())
            else:
                batch.append(job)
        return batch

    def _release(self, job_ids: list[str]) -> None:
        """Back to the queue now, not at lease expiry (a fault that is not theirs)."""
        try:
            with session_scope(self.sessions) as session:
                for job_id in job_ids:
                    claims.release(session=session, job_id=job_id, worker_id=self.worker_id)
        except Exception as exc:  # best effort, often on the way out of another fault
            log.warning("could not release %d job(s) (%s); their leases will expire",
                        len(job_ids), exc)

    # -- running ----------------------------------------------------------------
    def _run_batch(self, batch: list[Job], started: float) -> None:
        task = batch[0].task
        runnable: list[Job] = []
        requests: list[Any] = []
        for job in batch:
            try:
                requests.append(self._request(job))
                runnable.append(job)
            except ModelError as exc:
                error = {"code": exc.code, "message": str(exc)}
                self._finish(job.id, JobStatus.FAILED, error=error)
        if not runnable:
            return
        keeper = LeaseKeeper(
            self.sessions,
            self.worker_id,
            self.settings.lease_seconds,
            [j.id for j in runnable],
            [j.deadline_at for j in runnable],
            self.events,
            self.settings.events_progress_seconds,
        )
        log.info("running %d %s job(s): %s", len(runnable), task, [j.id for j in runnable])
        with keeper:
            try:
                if task == "generate":
                    results = self.runner.generate(requests, keeper)
                else:
                    results = self.runner.understand(requests, keeper)
            except Exception as exc:  # a runner bug must still end every job, not hang it
                log.exception("runner failed on the whole batch")
                results = [ModelError(f"{type(exc).__name__}: {exc}") for _ in runnable]
        elapsed = round(time.monotonic() - started, 3)
        worker_metrics.record_batch(self.model_id, task, results, elapsed)
        for index, (job, result) in enumerate(zip(runnable, results, strict=True)):
            if job.id in keeper.lost:
                continue  # another worker owns it now
            self._complete(job, index, result, keeper, elapsed)

    def _request(self, job: Job) -> GenerateRequest | UnderstandRequest:
        data = job.input
        if job.task == "generate":
            return GenerateRequest(
                prompt=data["prompt"],
                num_images=data.get("num_images", 1),
                seed=data["seed"],
                guidance=data.get("guidance"),
                temperature=data.get("temperature"),
                steps=data.get("steps"),
                preview=bool(data.get("preview", False)),
            )
        try:
            raw = self.storage.get(data["image"]["key"])
        except KeyError as exc:
            raise ModelError("the job's input image is missing from storage") from exc
        try:
            image = open_rgb(raw)
        except Exception as exc:
            raise InvalidInput(f"input image could not be decoded: {exc}") from exc
        return UnderstandRequest(
            image=image,
            question=data.get("question", ""),
            seed=data["seed"],
            max_new_tokens=data.get("max_new_tokens"),
            temperature=data.get("temperature"),
            top_p=data.get("top_p"),
            messages=tuple(
                Turn(m["role"], m["content"], bool(m.get("image", False)))
                for m in data.get("messages") or ()
            ),
        )

    def _complete(
        self, job: Job, index: int, result: Any, keeper: LeaseKeeper, elapsed: float
    ) -> None:
        if isinstance(result, Canceled):
            error = deadline_error() if keeper.deadline_passed(index) else None
            self._finish(job.id, JobStatus.CANCELED, error=error, run_seconds=elapsed)
        elif isinstance(result, ModelError):
            self._finish(
                job.id,
                JobStatus.FAILED,
                error={"code": result.code, "message": str(result)},
                run_seconds=elapsed,
            )
        elif isinstance(result, GenerateResult):
            images = [self._upload(job.id, n, img) for n, img in enumerate(result.images)]
            self._finish(
                job.id,
                JobStatus.SUCCEEDED,
                output={"images": images, "seed": job.input["seed"]},
                run_seconds=elapsed,
            )
        elif isinstance(result, UnderstandResult):
            keeper.final_text(index, result.text)  # the live token stream's last delta
            self._finish(
                job.id,
                JobStatus.SUCCEEDED,
                output={"text": result.text, "seed": job.input["seed"], **_usage(result)},
                run_seconds=elapsed,
            )
        else:
            self._finish(
                job.id,
                JobStatus.FAILED,
                run_seconds=elapsed,
                error={
                    "code": "model_error",
                    "message": f"runner returned {type(result).__name__}",
                },
            )

    def _upload(self, job_id: str, n: int, image: Any) -> dict[str, Any]:
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        key = f"jobs/{job_id}/{n}.png"  # deterministic: a rerun overwrites, never duplicates
        _retry(lambda: self.storage.put(key, buf.getvalue(), "image/png"), StorageError)
        return {
            "key": key,
            "width": image.width,
            "height": image.height,
            "content_type": "image/png",
        }

    def _finish(self, job_id: str, status: JobStatus, **fields: Any) -> None:
        def commit() -> bool:
            with session_scope(self.sessions) as session:
                if not claims.finish(
                    session=session,
                    job_id=job_id,
                    worker_id=self.worker_id,
                    status=status,
                    **fields,
                ):
                    log.warning("job %s: no longer ours; result dropped", job_id)
                    return False
            return True

        # This one job, not the batch it ran in, is what these lines are about.
        with log_context(job_id=job_id, job_ids=None):
            owned = _retry(commit, OperationalError)
            log.info("job %s: %s", job_id, status)
        worker_metrics.record_finish(self.model_id, status if owned else "dropped")


def _usage(result: UnderstandResult) -> dict[str, Any]:
    """`usage` and `finish_reason` for an understanding job's output, when the runner
    counted them (docs/API.md, "Jobs")."""
    out: dict[str, Any] = {}
    if result.prompt_tokens is not None and result.completion_tokens is not None:
        out["usage"] = {"prompt_tokens": int(result.prompt_tokens),
                        "completion_tokens": int(result.completion_tokens)}
    if result.finish_reason in ("stop", "length"):
        out["finish_reason"] = result.finish_reason
    return out


def _retry(fn: Any, errors: type[Exception] | tuple[type[Exception], ...], tries: int = 4) -> Any:
    """A few quick in-process retries; longer outages go back through the broker."""
    for attempt in range(tries):
        try:
            return fn()
        except errors:
            if attempt == tries - 1:
                raise
            time.sleep(0.5 * 2**attempt)
    return None
