"""Submitting one checked job as /v1 does, and holding the request until it ends; the
OpenAIError of a job that failed, was canceled or is still running when the hold ends.

Both waits are on the job's live event channel (service/core/events.py) through
service/api/waiting.py, as `Prefer: wait` and the /v1 event streams do:
`wait_terminal` for its terminal `status` event, `TextStream` for its `token` events
as the worker decodes. The job's row stays the truth, checked once per heartbeat
period should an event be lost.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterator
from typing import Any

from flask import request

from service.api import waiting
from service.api.context import current_key, db, runtime
from service.api.parsing.submit import CheckedJob
from service.api.routes.jobs import insert_and_publish
from service.core import events
from service.core.events import Event
from service.core.tables import Job
from service.lifecycle import jobs as crud
from service.lifecycle.jobs import NewJob
from service.lifecycle.status import JobStatus, is_terminal
from service.openai.render import job_failure
from service.openai.routes.blueprint import OpenAIError

log = logging.getLogger(__name__)

JOB_HEADER = "x-janus-job-id"  # on every answer that created a job: GET /v1/jobs/{id}
_WAIT = re.compile(r"(?:^|[;,\s])wait=(\d{1,9})")


def seconds() -> int:
    """How long to hold a request for its job: JANUS_OPENAI_WAIT_SECONDS, or less when the
    client asks with `Prefer: wait=N` (e.g. a client whose own timeout is shorter)."""
    limit = runtime().settings.openai_wait_seconds
    match = _WAIT.search(request.headers.get("Prefer", ""))
    return min(int(match.group(1)), limit) if match else limit


def job_error(job: Any) -> OpenAIError:
    """`job`: anything with the job row's attributes (an ORM Job or a selected row)."""
    status, code, message = job_failure(job)
    return OpenAIError(status, message, code=code, headers={JOB_HEADER: job.id}, retry=False)


def timeout_error(job_id: str, seconds: int) -> OpenAIError:
    """The hold ran out: the job keeps running and its id says where to find it."""
    return OpenAIError(
        504,
        f"job {job_id} did not finish within {seconds} seconds; it keeps running: read it "
        f"with GET /v1/jobs/{job_id} (or cancel it with POST /v1/jobs/{job_id}/cancel)",
        code="job_timeout", headers={JOB_HEADER: job_id}, retry=False,
    )


def submit(checked: CheckedJob) -> NewJob:
    """Create and publish an interactive job (lane 0), exactly as POST /v1/jobs does."""
    job, _ = insert_and_publish(checked.spec)
    return job


def load(job_id: str) -> Job:
    job = crud.get_job(session=db(), api_key_id=current_key().id, job_id=job_id)
    if job is None:  # created by this request under this key: it cannot vanish
        raise OpenAIError(500, f"job {job_id} is gone", code="job_missing", retry=False)
    return job


def wait_terminal(job_id: str, seconds: float) -> Job | None:
    """The job once terminal, or None when `seconds` pass first (service.api.waiting:
    woken by the job's terminal event, the row checked once per heartbeat period)."""
    db().rollback()  # hand the connection back while we wait
    waiting.wait_until_ended(job_id, time.monotonic() + seconds,
                             lambda: waiting.job_ended(job_id))
    job = load(job_id)
    return job if is_terminal(job.status) else None


def wait_succeeded(job_id: str, seconds: int) -> Job:
    """The job once it has succeeded; raises its OpenAIError if it did not, in time."""
    done = wait_terminal(job_id, seconds)
    if done is None:
        raise timeout_error(job_id, seconds)
    if done.status != JobStatus.SUCCEEDED:
        raise job_error(done)
    return done


class TextStream:
    """An understanding job's answer as text deltas; `None` items are heartbeats.

    After iteration, `job` is the terminal job, or None if `seconds` passed first.
    Deltas are the worker's `token` events on the job's live event channel, read from
    its first event on, so they arrive as the worker decodes. The row is the truth:
    when a quiet heartbeat period finds the job ended (its status event lost), what
    the log holds is drained first; and any text the channel missed is sent before
    the stream ends, so the deltas always join to the job's `output.text`.
    """

    def __init__(self, job_id: str, seconds: float) -> None:
        self.job_id = job_id
        self.seconds = seconds
        self.job: Job | None = None

    def _tokens(self, found: list[Event]) -> Iterator[str]:
        for event in found:
            text = event.data.get("text")
            if event.kind == events.TOKEN and isinstance(text, str) and text:
                yield text

    def __iter__(self) -> Iterator[str | None]:
        deadline = time.monotonic() + self.seconds
        every = runtime().settings.events_heartbeat_seconds
        db().rollback()  # no connection held while the stream is open
        sent, after = "", events.START
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            found, _ = waiting.read(self.job_id, after, min(left, every))
            if found:
                after = found[-1].id
            for text in self._tokens(found):
                sent += text
                yield text
            if any(e.kind == events.STATUS for e in found):
                break
            if not found:  # a quiet heartbeat period
                if waiting.job_ended(self.job_id):
                    drained, _ = waiting.read(self.job_id, after, 0)
                    for text in self._tokens(drained):
                        sent += text
                        yield text
                    break
                yield None
        job = self.job = load(self.job_id)
        text = (job.output or {}).get("text", "") if job.status == JobStatus.SUCCEEDED else ""
        if text.startswith(sent) and len(text) > len(sent):
            yield text[len(sent):]
        elif not text.startswith(sent):
            log.warning("job %s: streamed text is not a prefix of its answer", self.job_id)
