"""What the worker's loop needs from job handling: claim, build requests, complete, release.

A broker message is only a wake-up. Jobs are claimed in SQL (with a lease) by the loop
(`service.workers.loop`), which runs them in the model's engines; this object turns a
claimed row into the runner's request, and an engine's result into stored outputs and
the job's terminal state, committed last. It knows nothing of engines or steps.
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
from service.core.logs import log_context
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
    Turn,
    UnderstandRequest,
    UnderstandResult,
)
from service.workers import worker_metrics
from service.workers.lease import LeaseKeeper

log = logging.getLogger(__name__)


class TransientError(Exception):
    """Storage or database trouble worth retrying the message for."""


@dataclass
class JobHandler:
    settings: Settings
    sessions: sessionmaker[Session]
    storage: Storage
    model_id: str
    worker_id: str
    # Publishes one wake-up for this model. Set by the worker; the handler only
    # decides when (see `keep_draining`).
    wake: Callable[[], None] | None = None
    events: EventLog | None = None  # live job events (progress, text); set by the worker

    def keep_draining(self) -> None:
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

    def claim(self, limit: int) -> list[Job]:
        """Claim up to `limit` queued jobs of one task; those whose deadline has passed are
        finished canceled here and not returned."""
        with session_scope(self.sessions) as session:
            claimed = claims.claim_next(
                session=session,
                model=self.model_id,
                worker_id=self.worker_id,
                lease_seconds=self.settings.lease_seconds,
                limit=limit,
            )
        batch = []
        for job in claimed:
            if job.deadline_at is not None and job.deadline_at <= utcnow():
                self.finish(job.id, JobStatus.CANCELED, error=deadline_error())
            else:
                batch.append(job)
        return batch

    def release(self, job_ids: list[str]) -> None:
        """Back to the queue now, not at lease expiry (a fault that is not theirs)."""
        try:
            with session_scope(self.sessions) as session:
                for job_id in job_ids:
                    claims.release(session=session, job_id=job_id, worker_id=self.worker_id)
        except Exception as exc:  # best effort, often on the way out of another fault
            log.warning("could not release %d job(s) (%s); their leases will expire",
                        len(job_ids), exc)

    def request(self, job: Job) -> GenerateRequest | UnderstandRequest:
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

    def complete(self, job: Job, result: Any, keeper: LeaseKeeper, elapsed: float) -> None:
        """Store the job's outcome (outputs uploaded first) and commit its terminal state."""
        if isinstance(result, Canceled):
            error = deadline_error() if keeper.deadline_passed(job.id) else None
            self.finish(job.id, JobStatus.CANCELED, error=error, run_seconds=elapsed)
        elif isinstance(result, ModelError):
            self.finish(
                job.id,
                JobStatus.FAILED,
                error={"code": result.code, "message": str(result)},
                run_seconds=elapsed,
            )
        elif isinstance(result, GenerateResult):
            images = [self._upload(job.id, n, img) for n, img in enumerate(result.images)]
            self.finish(
                job.id,
                JobStatus.SUCCEEDED,
                output={"images": images, "seed": job.input["seed"]},
                run_seconds=elapsed,
            )
        elif isinstance(result, UnderstandResult):
            keeper.final_text(job.id, result.text)  # the live token stream's last delta
            self.finish(
                job.id,
                JobStatus.SUCCEEDED,
                output={"text": result.text, "seed": job.input["seed"], **_usage(result)},
                run_seconds=elapsed,
            )
        else:
            self.finish(
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

    def finish(self, job_id: str, status: JobStatus, **fields: Any) -> None:
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
