"""The Celery task: thin. A message wakes the worker's loop; transient faults retry it."""

from __future__ import annotations

from celery import Celery, Task

from service.core.broker import RUN_JOB
from service.workers.handler import TransientError
from service.workers.loop import WorkerLoop

MAX_TRANSIENT_RETRIES = 5


def register_tasks(app: Celery, loop: WorkerLoop) -> None:
    @app.task(name=RUN_JOB, bind=True, max_retries=MAX_TRANSIENT_RETRIES)
    def run_job(self: Task, job_id: str) -> None:
        try:
            loop.run(job_id)
        except TransientError as exc:
            # Short countdowns only: an ETA beyond the visibility timeout loops forever
            # on Redis (celery#2599).
            raise self.retry(exc=exc, countdown=min(2**self.request.retries, 30)) from exc
