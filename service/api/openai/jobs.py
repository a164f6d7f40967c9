"""Submitting one checked job as /v1 does, and holding the request until it ends.

Both wait on the job's live event channel (service/core/events.py): `wait_terminal`
for its terminal `status` event, `TextStream` for its `token` events as the worker
decodes. The job's row stays the truth: it is read again after a status event, and
at least every RECHECK_SECONDS should an event be lost.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

from service.api.context import current_key, db, runtime
from service.api.openai.errors import OpenAIError
from service.api.submit import CheckedJob
from service.core import events
from service.core.events import Event
from service.core.tables import Job
from service.lifecycle import jobs as crud
from service.lifecycle.status import JobStatus, is_terminal

log = logging.getLogger(__name__)

POLL_SECONDS = 0.25  # only while the event store cannot be read
RECHECK_SECONDS = 2.0  # the row is read at least this often, should an event be lost


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


def _next_events(job_id: str, after: str | None, timeout: float) -> tuple[list[Event], str | None]:
    """The job's live events after `after`, waiting up to `timeout` (service/core/events.py).

    The event store is best effort: if it fails, this sleeps a poll interval and the
    caller's check of the job's row carries on alone.
    """
    try:
        found = runtime().events.read(job_id, after, timeout)
    except Exception:  # noqa: BLE001 - the row is the truth; events only wake us sooner
        log.warning("live events unreadable for %s; polling its row", job_id, exc_info=True)
        time.sleep(min(POLL_SECONDS, timeout))
        return [], after
    return found, (found[-1].id if found else after)


def wait_terminal(job_id: str, seconds: float) -> Job | None:
    """The job once terminal, or None when `seconds` pass first.

    Woken by the job's terminal `status` event; its row is read again at least every
    RECHECK_SECONDS in case that event was dropped.
    """
    deadline = time.monotonic() + seconds
    session = db()
    after: str | None = None
    while True:
        job = load(job_id)
        if is_terminal(job.status):
            return job
        session.rollback()  # hand the connection back while we wait
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            found, after = _next_events(job_id, after, min(left, RECHECK_SECONDS))
            if not found or any(e.kind == events.STATUS for e in found):
                break  # a status, or a quiet spell: read the row


class TextStream:
    """An understanding job's answer as text deltas; `None` items are heartbeats.

    After iteration, `job` is the terminal job, or None if `seconds` passed first.
    Deltas are the worker's `token` events on the job's live event channel, so they
    arrive as the worker decodes. The row is the truth: once the job is terminal, any
    text the channel missed (a dropped event) is sent before the stream ends, so the
    deltas always join to the job's `output.text`.
    """

    def __init__(self, job_id: str, seconds: float) -> None:
        self.job_id = job_id
        self.seconds = seconds
        self.job: Job | None = None

    def __iter__(self) -> Iterator[str | None]:
        deadline = time.monotonic() + self.seconds
        every = runtime().settings.events_heartbeat_seconds  # keeps proxies from closing
        beat = time.monotonic() + every
        session = db()
        sent, after, check = "", None, True
        while True:
            if check:
                job = load(self.job_id)
                if is_terminal(job.status):
                    break
                session.rollback()
            now = time.monotonic()
            if now >= deadline:
                return
            if now >= beat:
                beat = now + every
                yield None
            found, after = _next_events(self.job_id, after,
                                        min(deadline - now, RECHECK_SECONDS, beat - now))
            check = not found
            for event in found:
                if event.kind == events.TOKEN and isinstance(event.data.get("text"), str):
                    sent += event.data["text"]
                    yield event.data["text"]
                elif event.kind == events.STATUS:
                    check = True
        self.job = job
        text = (job.output or {}).get("text", "") if job.status == JobStatus.SUCCEEDED else ""
        if text.startswith(sent) and len(text) > len(sent):
            yield text[len(sent):]
        elif not text.startswith(sent):
            log.warning("job %s: streamed text is not a prefix of its answer", self.job_id)
