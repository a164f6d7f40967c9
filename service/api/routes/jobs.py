"""/v1/jobs: submit, read (optionally waiting), list, cancel, delete stored data."""

from __future__ import annotations

import re
import time

from flask import Blueprint, Response, g, jsonify, request
from sqlalchemy.exc import IntegrityError

from service.api import waiting
from service.api.context import current_key, db, runtime
from service.api.errors import ApiError, validation_error
from service.api.middleware.auth import require_api_key
from service.api.parsing.submit import Submission, parse_submission
from service.api.schemas.responses import JobList
from service.core.broker import publish
from service.core.storage import StorageError
from service.core.tables import Job
from service.lifecycle import jobs as crud
from service.lifecycle.jobs import JobSpec, NewJob
from service.lifecycle.retention import NotFinished, remove_job_data
from service.lifecycle.status import STATUSES, JobStatus, is_terminal
from service.lifecycle.views import JobObject, job_view, public

bp = Blueprint("jobs", __name__)
bp.before_request(require_api_key)

_WAIT = re.compile(r"(?:^|[;,\s])wait=(\d+)")


def view(job: Job | NewJob, position: int | None = None) -> JobObject:
    """The job object as clients see it, with its queue position while queued.

    `position`: already counted (a new job's, counted at submit right after its INSERT).
    """
    rt = runtime()
    if job.status == JobStatus.QUEUED and position is None:
        position = crud.queue_position(session=db(), job=job)
    elif job.status != JobStatus.QUEUED:
        position = None
    return job_view(job, rt.storage, rt.settings.url_expiry_seconds, position)


def render(
    job: Job | NewJob, status: int = 200, position: int | None = None
) -> tuple[Response, int]:
    return jsonify(public(view(job, position))), status


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


def insert_and_publish(
    spec: JobSpec,
    *,
    idempotency_key: str | None = None,
    request_hash: str | None = None,
    cancel_after: float | None = None,
) -> tuple[NewJob, int]:
    """Insert and commit a checked job, then publish it; returns it and its position.

    No ORM session on this path: one pooled connection, and on Postgres one statement
    that inserts, counts the job into its queue and reads its position, committed on
    its own. The job is committed before it is published, as ever; if the broker is
    away the row is marked for the sweeper. (POST /v1/jobs and the OpenAI face.)
    """
    rt = runtime()
    if "db" in g and g.db.in_transaction():  # the key was read from the database
        g.db.commit()  # (a cache miss): hand that connection back first
    job, position = crud.create_job(
        db=rt.db,
        storage=rt.storage,
        api_key_id=current_key().id,
        spec=spec,
        idempotency_key=idempotency_key,
        request_hash=request_hash,
        cancel_after=cancel_after,
    )
    unpublished = publish(rt.celery, [(job.id, job.model)], rt.settings.publish_max_retries)
    if unpublished:  # the broker is away: the sweeper publishes it as soon as it can
        crud.mark_unpublished(session=db(), job_ids=unpublished)
        db().commit()
    return job, position


@bp.post("/v1/jobs")
def create_job() -> tuple[Response, int]:
    rt = runtime()
    key = current_key()
    g.rate = rt.limiter.check(key.id)
    sub = parse_submission(request, rt.models, rt.settings)
    if sub.idempotency_key:
        existing = crud.find_by_idempotency_key(
            session=db(), api_key_id=key.id, key=sub.idempotency_key
        )
        db().rollback()  # a read: hand the connection back before the INSERT takes one
        if existing is not None:
            return _replay(existing, sub)
    try:
        job, position = insert_and_publish(
            sub.spec,
            idempotency_key=sub.idempotency_key,
            request_hash=sub.request_hash,
            cancel_after=sub.cancel_after,
        )
    except IntegrityError:  # the same Idempotency-Key committed since our lookup
        existing = crud.find_by_idempotency_key(
            session=db(), api_key_id=key.id, key=sub.idempotency_key or ""
        )
        if existing is None:
            raise
        return _replay(existing, sub)
    return _render_after_wait(job, 202, position)


def _wait_seconds() -> int:
    match = _WAIT.search(request.headers.get("Prefer", ""))
    if not match:
        return 0
    return min(int(match.group(1)), runtime().settings.max_wait_seconds)


def _render_after_wait(
    job: Job | NewJob, status: int = 200, position: int | None = None
) -> tuple[Response, int]:
    """Honour `Prefer: wait=N`: hold the answer until the job is terminal or N seconds pass.

    The end is pushed by the job's event log (service/api/waiting.py), not polled;
    no connection is held while waiting. `position`: the new job's queue position,
    counted at submit; a reload recounts it.
    """
    wait = _wait_seconds()
    if wait and not is_terminal(job.status):
        job_id = job.id  # before the rollback: reading it after would reload the row
        db().rollback()  # hand the connection back while we wait (and expire `job`)
        waiting.wait_until_ended(
            job_id, time.monotonic() + wait, lambda: waiting.job_ended(job_id)
        )
        job = _owned(job_id)
        position = None
    response, code = render(job, status, position)
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
    page = JobList(
        object="list",
        data=[view(j) for j in rows],
        has_more=has_more,
        next=rows[-1].id if has_more and rows else None,
    )
    return jsonify(public(page))


@bp.post("/v1/jobs/<job_id>/cancel")
def cancel_job(job_id: str) -> tuple[Response, int]:
    job = _owned(job_id)
    if not is_terminal(job.status):
        crud.request_cancel(session=db(), job=job)
        db().commit()
    return render(job)


@bp.delete("/v1/jobs/<job_id>")
def delete_job_data(job_id: str) -> tuple[Response, int]:
    """A finished job's stored inputs and outputs go now; the job object stays."""
    session = db()
    try:
        job = remove_job_data(session=session, storage=runtime().storage, job=_owned(job_id))
    except NotFinished as exc:
        session.rollback()
        raise ApiError(
            409,
            "job_not_finished",
            f"job {job_id!r} is {exc}; cancel it and delete it once it has finished",
        ) from exc
    except StorageError as exc:  # nothing is marked: the job still has its data
        session.rollback()
        raise ApiError(
            503, "storage_unavailable", "the object store did not answer; try again",
            headers={"Retry-After": "5"},
        ) from exc
    session.commit()
    return render(job)
