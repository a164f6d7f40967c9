"""/v1/batches: bulk uploads of many jobs in one file, their progress, results and cancel."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from flask import Blueprint, Response, g, jsonify, request, stream_with_context

from service.api.context import current_key, db, runtime
from service.api.errors import ApiError, validation_error
from service.api.middleware.auth import require_api_key
from service.api.parsing.batch_upload import detect_format, parse_defaults, parse_upload
from service.api.parsing.bodies import TooDeep, loads, text_problems
from service.api.parsing.submit import check_webhook
from service.api.schemas.responses import BatchList
from service.core.tables import Batch
from service.lifecycle import batches as crud
from service.lifecycle.jobs import publish_jobs
from service.lifecycle.views import batch_view, public, result_line

bp = Blueprint("batches", __name__)
bp.before_request(require_api_key)


def _owned(batch_id: str) -> Batch:
    batch = crud.get_batch(session=db(), api_key_id=current_key().id, batch_id=batch_id)
    if batch is None:
        raise ApiError(404, "not_found", f"no batch {batch_id!r}")
    return batch


def _json_part(name: str) -> dict[str, Any]:
    raw = request.form.get(name)
    if raw is None or not raw.strip():
        return {}
    try:
        value = loads(raw)
    except ValueError as exc:
        message = str(exc) if isinstance(exc, TooDeep) else "not valid JSON"
        raise validation_error([{"field": name, "message": message}]) from exc
    if not isinstance(value, dict):
        raise validation_error([{"field": name, "message": "must be a JSON object"}])
    problems = text_problems(value, name)
    if problems:
        raise validation_error(problems)
    return value


@bp.post("/v1/batches")
def create_batch() -> tuple[Response, int]:
    rt = runtime()
    settings = rt.settings
    g.rate = rt.limiter.check(current_key().id)
    # Uploads may be far larger than a single job request.
    request.max_content_length = settings.batch_max_bytes
    if request.mimetype != "multipart/form-data":
        raise ApiError(
            415,
            "unsupported_media_type",
            "send multipart/form-data with a part 'file' (JSONL or CSV)",
        )
    upload = request.files.get("file")
    if upload is None:
        raise validation_error([{"field": "file", "message": "a JSONL or CSV file part"}])
    data = upload.read()
    fmt = detect_format(upload.filename or "", upload.mimetype or "", data)
    defaults = parse_defaults(request.form.get("defaults"))
    webhook = request.form.get("webhook") or None
    if webhook is not None:
        if text_problems(webhook, "webhook"):
            raise validation_error(text_problems(webhook, "webhook"))
        check_webhook(webhook, settings)
    metadata = _json_part("metadata")
    lines = parse_upload(data, fmt, defaults, rt.models, settings)

    session = db()
    batch, ids = crud.create_batch(
        session=session,
        storage=rt.storage,
        api_key_id=current_key().id,
        specs=[line.spec for line in lines],
        input_format=fmt,
        webhook=webhook,
        metadata=metadata,
    )
    session.commit()
    publish_jobs(
        session=session,
        celery=rt.celery,
        wakeups=crud.wakeups(ids, [line.job.body.model for line in lines], settings.batch_wakeups),
        job_ids=ids,
        max_retries=settings.publish_max_retries,
    )
    session.commit()
    return jsonify(public(batch_view(batch))), 202


@bp.get("/v1/batches/<batch_id>")
def read_batch(batch_id: str) -> Response:
    return jsonify(public(batch_view(_owned(batch_id))))


@bp.get("/v1/batches")
def list_batches() -> Response:
    raw_limit = request.args.get("limit", "20")
    if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= 100:
        raise validation_error([{"field": "limit", "message": "an integer from 1 to 100"}])
    rows, has_more = crud.list_batches(
        session=db(),
        api_key_id=current_key().id,
        limit=int(raw_limit),
        after=request.args.get("after") or None,
    )
    page = BatchList(
        object="list",
        data=[batch_view(b) for b in rows],
        has_more=has_more,
        next=rows[-1].id if has_more and rows else None,
    )
    return jsonify(public(page))


@bp.post("/v1/batches/<batch_id>/cancel")
def cancel_batch(batch_id: str) -> Response:
    batch = crud.cancel_batch(session=db(), batch=_owned(batch_id))
    db().commit()
    return jsonify(public(batch_view(batch)))


@bp.get("/v1/batches/<batch_id>/results")
def batch_results(batch_id: str) -> Response:
    _owned(batch_id)
    rt = runtime()
    expires = rt.settings.url_expiry_seconds

    def lines() -> Iterator[str]:
        for row in crud.iter_results(session=db(), batch_id=batch_id):
            yield json.dumps(public(result_line(row, rt.storage, expires))) + "\n"

    return Response(stream_with_context(lines()), mimetype="application/x-ndjson")
