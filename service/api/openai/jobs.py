"""Submitting one checked job as /v1 does, and holding the request until it ends.

`wait_terminal` polls the job's row (one indexed SELECT every quarter second, the
connection handed back in between), as `Prefer: wait` on /v1 does. `TextStream`
yields an understanding job's text as it is decoded; see its docstring for where
the text comes from.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from service.api.context import current_key, db, runtime
from service.api.openai.errors import OpenAIError
from service.api.submit import CheckedJob
from service.core.tables import Job
from service.lifecycle import jobs as crud
from service.lifecycle.status import JobStatus, is_terminal

POLL_SECONDS = 0.25
HEARTBEAT_SECONDS = 10.0  # an SSE comment this often keeps proxies from closing the stream


def submit(checked: CheckedJob) -> Job:
    """Create and publish an interactive job (lane 0), exactly as POST /v1/jobs does."""
    rt = runtime()
    session = db()
    job = crud.create_job(session=session, storage=rt.storage, api_key_id=current_key().id,
                          spec=checked.spec)
    session.commit()  # committed before it is published: a worker always finds the row
    crud.publish_jobs(session=session, celery=rt.celery, wakeups=[(job.id, job.model)],
                      job_ids=[job.id], max_retries=rt.settings.publish_max_retries)
    session.commit()
    return job


def load(job_id: str) -> Job:
    job = crud.get_job(session=db(), api_key_id=current_key().id, job_id=job_id)
    if job is None:  # created by this request under this key: it cannot vanish
        raise OpenAIError(500, f"job {job_id} is gone", code="job_missing", retry=False)
    return job


def wait_terminal(job_id: str, seconds: float) -> Job | None:
    """The job once terminal, or None when `seconds` pass first."""
    deadline = time.monotonic() + seconds
    session = db()
    while True:
        job = load(job_id)
        if is_terminal(job.status):
            return job
        session.rollback()  # hand the connection back while we sleep
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        time.sleep(min(POLL_SECONDS, left))


class TextStream:
    """An understanding job's answer as text deltas; `None` items are heartbeats.

    After iteration, `job` is the terminal job, or None if `seconds` passed first.

    The deltas come from the job's row: when the job ends, its whole answer is one
    delta. This is the one place to change when the worker publishes its tokens on a
    live event channel: read `token` events there instead of polling, and keep the
    final check below (text the channel missed is sent before the stream ends).
    """

    def __init__(self, job_id: str, seconds: float) -> None:
        self.job_id = job_id
        self.seconds = seconds
        self.job: Job | None = None

    def __iter__(self) -> Iterator[str | None]:
        deadline = time.monotonic() + self.seconds
        beat = time.monotonic() + HEARTBEAT_SECONDS
        session = db()
        sent = ""
        while True:
            job = load(self.job_id)
            if is_terminal(job.status):
                self.job = job
                break
            session.rollback()
            now = time.monotonic()
            if now >= deadline:
                return
            if now >= beat:
                beat = now + HEARTBEAT_SECONDS
                yield None
            time.sleep(min(POLL_SECONDS, deadline - now))
        text = (job.output or {}).get("text", "") if job.status == JobStatus.SUCCEEDED else ""
        if text.startswith(sent) and len(text) > len(sent):
            yield text[len(sent):]
