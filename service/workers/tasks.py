"""The Celery task: thin. It passes the job id to the executor and retries transient faults."""

from __future__ import annotations

from celery import Celery, Task

from service.core.broker import RUN_JOB
from service.workers.engine import EngineLoop
from service.workers.executor import Executor, TransientError

MAX_TRANSIENT_RETRIES = 5


def register_tasks(app: Celery, executor: Executor, loop: EngineLoop | None = None) -> None:
    """`loop`: the continuous engine, which a message starts; None: the static path."""
    handler = loop or executor

    @app.task(name=RUN_JOB, bind=True, max_retries=MAX_TRANSIENT_RETRIES)
    def run_job(self: Task, job_id: str) -> None:
        try:
            handler.run(job_id)
        except TransientError as exc:
            # Short countdowns only: an ETA beyond the visibility timeout loops forever
            # on Redis (celery#2599).
            raise self.retry(exc=exc, countdown=min(2**self.request.retries, 30)) from exc
