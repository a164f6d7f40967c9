"""Server-sent events: GET /v1/jobs/{id}/events and GET /v1/batches/{id}/events.

A job's stream replays its stored events after `Last-Event-ID` (all of them
without one), then follows the log live: `queued` (the queue position, while
queued), `started`, `progress`, `token`, `preview`, and last `completed`, whose
data is the job object exactly as GET /v1/jobs/{id} renders it; then it ends.
Ids are the log's own, so a reconnect with `Last-Event-ID` resumes with neither
loss nor repeats. `queued` is a snapshot, not history: it carries the id of
the last event before it. `completed` has the id `end`; reconnecting after it
answers 204 (nothing follows), which also stops an EventSource from retrying.

A batch's stream sends `counts` (the batch's counts, at most once a second, on
change) and `completed` (the batch object). Idle streams get a comment line every
`events_heartbeat_seconds`, so proxies keep them open.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

from flask import Blueprint, Response, request, stream_with_context

from service.api import waiting
from service.api.context import current_key, db, runtime
from service.api.errors import ApiError
from service.api.middleware.auth import require_api_key
from service.api.routes import jobs
from service.core.events import QUEUED, START, STARTED, STATUS
from service.core.tables import Batch, Job
from service.lifecycle import batches as batch_crud
from service.lifecycle import jobs as crud
from service.lifecycle.status import BatchStatus, JobStatus, is_terminal
from service.lifecycle.views import batch_view, public

bp = Blueprint("streams", __name__)
bp.before_request(require_api_key)

END = "end"  # the id of `completed`
# A queued job's position is counted again this often while the stream waits.
QUEUE_POSITION_SECONDS = 5.0
# A batch's `counts` go out at most this often.
BATCH_COUNTS_SECONDS = 1.0


def sse(event: str, data: dict[str, Any], event_id: str) -> str:
    return f"id: {event_id}\nevent: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


def _last_event_id() -> str | None:
    value = request.headers.get("Last-Event-ID", "").strip()
    if not value:
        return None
    if value != END and not runtime().events.valid_id(value):
        raise ApiError(400, "bad_last_event_id", "Last-Event-ID is not an id this stream sent")
    return value


def _stream(body: Iterator[str]) -> Response:
    response = Response(stream_with_context(body), mimetype="text/event-stream")
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Accel-Buffering"] = "no"  # nginx: pass events through at once
    return response


def _job(job_id: str) -> Job:
    job = crud.get_job(session=db(), api_key_id=current_key().id, job_id=job_id)
    if job is None:
        raise ApiError(404, "not_found", f"no job {job_id!r}")
    return job


def _batch(batch_id: str) -> Batch:
    batch = batch_crud.get_batch(session=db(), api_key_id=current_key().id, batch_id=batch_id)
    if batch is None:
        raise ApiError(404, "not_found", f"no batch {batch_id!r}")
    return batch


@bp.get("/v1/jobs/<job_id>/events")
def job_events(job_id: str) -> Response:
    _job(job_id)
    after = _last_event_id()
    if after == END:
        return Response(status=204)
    db().rollback()  # no connection is held while the stream waits
    return _stream(_job_stream(job_id, after or START))


def _job_stream(job_id: str, cursor: str) -> Iterator[str]:
    yield ": stream open\n\n"  # headers and a first byte now: the client knows it is live
    job = _job(job_id)
    status, heartbeat = job.status, runtime().settings.events_heartbeat_seconds
    position: int | None = None
    quiet_since = time.monotonic()
    while not is_terminal(status):
        if status == JobStatus.QUEUED and (
            count := crud.queue_position(session=db(), job=job)
        ) != position:
            position = count
            yield sse(QUEUED, {"queue_position": position}, cursor)
        db().rollback()  # no connection held while waiting (this also expires `job`)
        queued = status == JobStatus.QUEUED
        timeout = min(QUEUE_POSITION_SECONDS, heartbeat) if queued else heartbeat
        events, _ = waiting.read(job_id, cursor, timeout)
        for event in events:
            cursor = event.id
            if event.kind == STATUS:
                break
            yield sse(event.kind, event.data, event.id)
        if events:
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since >= heartbeat:
            yield ": keep-alive\n\n"
            quiet_since = time.monotonic()
        if not events or any(e.kind == STATUS for e in events):
            job = _job(job_id)  # the end, or the safety net and recount of a quiet period
            status = job.status
        elif any(e.kind == STARTED for e in events):
            status = JobStatus.RUNNING
    # Whatever the worker wrote before the end and is not sent yet (the end may have been
    # seen in the database first), then the job itself.
    while events := waiting.read(job_id, cursor, 0)[0]:
        for event in events:
            cursor = event.id
            if event.kind != STATUS:
                yield sse(event.kind, event.data, event.id)
    yield sse("completed", public(jobs.view(_job(job_id))), END)


@bp.get("/v1/batches/<batch_id>/events")
def batch_events(batch_id: str) -> Response:
    _batch(batch_id)
    _last_event_id()  # checked, but counts are a snapshot: a reconnect gets the current ones
    db().rollback()
    return _stream(_batch_stream(batch_id))


def _batch_stream(batch_id: str) -> Iterator[str]:
    cursor = waiting.newest_id(batch_id)
    batch = _batch(batch_id)  # read after the id: later moves are in the log after it
    heartbeat = runtime().settings.events_heartbeat_seconds
    sent: dict[str, Any] | None = None
    last_sent = 0.0
    while True:
        view = public(batch_view(batch))
        if BatchStatus(batch.status).is_terminal:
            yield sse("completed", view, END)
            return
        if view["counts"] != sent:
            sent, last_sent = view["counts"], time.monotonic()
            yield sse("counts", view["counts"], cursor)
        db().rollback()
        events, _ = waiting.read(batch_id, cursor, heartbeat)
        if events:
            cursor = events[-1].id
            # Throttled: moves that land within the second come out as one `counts`.
            time.sleep(max(0.0, BATCH_COUNTS_SECONDS - (time.monotonic() - last_sent)))
        else:
            yield ": keep-alive\n\n"
        batch = _batch(batch_id)
