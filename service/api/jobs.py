"""/v1/jobs: submit, read (optionally waiting), list, cancel."""

from __future__ import annotations

import re
import time
from datetime import timedelta
from typing import Any

from flask import Blueprint, Response, g, jsonify, request
from sqlalchemy.exc import IntegrityError

from service import jobs as crud
from service.api.auth import require_api_key
from service.api.context import current_key, db, runtime
from service.api.errors import ApiError, validation_error
from service.api.submit import Submission, parse_submission
from service.core.broker import publish
from service.core.ids import new_id
from service.core.tables import STATUSES, TERMINAL, Job, utcnow
from service.jobview import job_object

bp = Blueprint("jobs", __name__)
bp.before_request(require_api_key)

_WAIT = re.compile(r"(?:^|[;,\s])wait=(\d+)")


def render(job: Job, status: int = 200) -> tuple[Response, int]:
    rt = runtime()
    position = None
    if job.status == "queued":
        position = crud.queue_position(session=db(), job=job)
    return jsonify(job_object(job, rt.storage, rt.settings.url_expiry_seconds, position)), status


def _owned(job_id: str) -> Job:
    job = crud.get_job(session=db(), api_key_id=current_key().id, job_id=job_id)
    if job is None:
        raise ApiError(404, "not_found", f"no job {job_id!r}")
    return job


def _replay(existing: Job, sub: Submission) -> tuple[Response, int]:
    if existing.request_hash != sub.request_hash:
        raise ApiError(
            409,
            "idempotency_conflict",
            "this Idempotency-Key was used with a different request body",
        )
    return render(existing, 200)


@bp.post("/v1/jobs")
def create_job() -> tuple[Response, int]:
    rt = runtime()
    g.rate = rt.limiter.check(current_key().id)
    sub = parse_submission(request, rt.models, rt.settings)
    session = db()
    key = current_key()
    if sub.idempotency_key:
        existing = crud.find_by_idempotency_key(
            session=session, api_key_id=key.id, key=sub.idempotency_key
        )
        if existing is not None:
            return _replay(existing, sub)

    job_id = new_id("job")
    stored_input: dict[str, Any] = dict(sub.input)
    if sub.image is not None:
        image_key = f"inputs/{job_id}/image.{sub.image.extension}"
        # Stored before the row exists: a worker never sees a job without its image.
        rt.storage.put(image_key, sub.image.data, sub.image.content_type)
        stored_input["image"] = {
            "key": image_key,
            "content_type": sub.image.content_type,
            "width": sub.image.width,
            "height": sub.image.height,
            "bytes": len(sub.image.data),
        }
    now = utcnow()
    job = Job(
        id=job_id,
        api_key_id=key.id,
        model=sub.body.model,
        task=sub.body.task,
        status="queued",
        input=stored_input,
        metadata_=sub.body.metadata or {},
        webhook=sub.body.webhook,
        webhook_events=sub.body.webhook_events or ["completed"],
        idempotency_key=sub.idempotency_key,
        request_hash=sub.request_hash,
        created_at=now,
        enqueued_at=now,
        deadline_at=now + timedelta(seconds=sub.cancel_after) if sub.cancel_after else None,
    )
    session.add(job)
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        existing = crud.find_by_idempotency_key(
            session=session, api_key_id=key.id, key=sub.idempotency_key or ""
        )
        if existing is None:
            raise
        return _replay(existing, sub)

    if publish(rt.celery, [(job.id, job.model)], rt.settings.publish_max_retries):
        crud.mark_unpublished(session=session, job_ids=[job.id])
        session.commit()
    return _render_after_wait(job, 202)


def _wait_seconds() -> int:
    match = _WAIT.search(request.headers.get("Prefer", ""))
    if not match:
        return 0
    return min(int(match.group(1)), runtime().settings.max_wait_seconds)


def _render_after_wait(job: Job, status: int = 200) -> tuple[Response, int]:
    """Honour `Prefer: wait=N`: hold the answer until the job is terminal or N seconds pass."""
    wait = _wait_seconds()
    deadline = time.monotonic() + wait
    session = db()
    while job.status not in TERMINAL and time.monotonic() < deadline:
        session.rollback()  # hand the connection back while we sleep
        time.sleep(min(0.25, max(0.0, deadline - time.monotonic())))
        job = _owned(job.id)
    response, code = render(job, status)
    if wait:
        response.headers["Preference-Applied"] = f"wait={wait}"
    return response, code


@bp.get("/v1/jobs/<job_id>")
def read_job(job_id: str) -> tuple[Response, int]:
    return _render_after_wait(_owned(job_id))


@bp.get("/v1/jobs")
def list_jobs() -> Response:
    args = request.args
    unknown = set(args) - {"status", "model", "batch_id", "limit", "after"}
    if unknown:
        raise validation_error(
            [{"field": name, "message": "unknown query parameter"} for name in sorted(unknown)]
        )
    status = args.get("status")
    if status is not None and status not in STATUSES:
        raise validation_error([{"field": "status", "message": f"one of {', '.join(STATUSES)}"}])
    raw_limit = args.get("limit", "20")
    if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= 100:
        raise validation_error([{"field": "limit", "message": "an integer from 1 to 100"}])
    rows, has_more = crud.list_jobs(
        session=db(),
        api_key_id=current_key().id,
        limit=int(raw_limit),
        after=args.get("after") or None,
        status=status,
        model=args.get("model"),
        batch_id=args.get("batch_id"),
    )
    rt = runtime()
    data = [
        job_object(
            j,
            rt.storage,
            rt.settings.url_expiry_seconds,
            crud.queue_position(session=db(), job=j) if j.status == "queued" else None,
        )
        for j in rows
    ]
    return jsonify(
        {
            "object": "list",
            "data": data,
            "has_more": has_more,
            "next": rows[-1].id if has_more and rows else None,
        }
    )


@bp.post("/v1/jobs/<job_id>/cancel")
def cancel_job(job_id: str) -> tuple[Response, int]:
    job = _owned(job_id)
    if job.status not in TERMINAL:
        crud.request_cancel(session=db(), job=job)
        db().commit()
    return render(job)
