"""How a row that left the engine becomes a stored outcome (`WorkerLoop`'s finished rows).

A finished row is handed to the `Finisher`'s thread. There a `Deferred` row's images are
decoded first (the slot is held until then), then its outputs are uploaded and its job
committed through `JobHandler.complete` (webhooks, batch counters and metrics follow from
there). Its lease is renewed by the loop's `LeaseKeeper` until the row is stored.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from sqlalchemy.exc import OperationalError

from service.core.storage import StorageError
from service.core.tables import Job
from service.models.base import ModelError
from service.workers import worker_metrics
from service.workers.finisher import Finisher
from service.workers.handler import JobHandler
from service.workers.lease import LeaseKeeper

log = logging.getLogger(__name__)


def row_ended(handler: JobHandler, job: Job, result: Any, keeper: LeaseKeeper, started: float,
              running: int) -> float:
    """Record the row's metrics and final progress; returns its run seconds."""
    elapsed = round(time.monotonic() - started, 3)
    worker_metrics.record_row(handler.model_id, job.task, result, elapsed, running)
    if not isinstance(result, ModelError):
        keeper.report_progress(job.id, 1.0)  # watchers see it reach the end, then finish
    return elapsed


def store_row(handler: JobHandler, finisher: Finisher, job: Job, result: Any,
              keeper: LeaseKeeper, started: float, running: int,
              elapsed: float | None) -> None:
    """On the finisher's thread: decode (a `Deferred`, `elapsed` None), upload and commit."""
    try:
        if elapsed is None:
            # The decode hears a cancel, a passed deadline or a lost lease between its
            # chunks, as the engine's steps do.
            try:
                result = result.finish(job.id, keeper)
            finally:
                finisher.release(job.id)
            if job.id in keeper.lost:
                return
            elapsed = row_ended(handler, job, result, keeper, started, running)
        handler.complete(job, result, keeper, elapsed)
    except StorageError as exc:
        log.warning("job %s: storing its output failed (%s); back to the queue", job.id, exc)
        handler.release([job.id])
    except OperationalError as exc:
        # Its lease runs out and the sweeper requeues it; the others go on.
        log.warning("job %s: committing failed (%s); its lease will expire", job.id, exc)
    finally:
        keeper.remove(job.id)
