"""/openai/v1/batches: OpenAI's Batch API on top of our bulk batches.

A valid input file becomes one of our batches (the same rows, bulk lane, counters,
cancel and webhooks as POST /v1/batches; the two share one id). An invalid one fails
at validation with `errors.data[].line` and enqueues nothing. The OpenAI status is
derived from our batch when read:

    our queued | running       -> in_progress   (validation ran inside the create call)
    our canceling              -> cancelling
    all jobs finished          -> finalizing, until the output/error files are written
    files written              -> completed | cancelled | expired

`validating` is never answered: the create call checks every line and enqueues them all
before it answers, so no batch is ever still being validated (an invalid file is
`failed` in the create answer itself).

What time alone triggers (a batch past its completion window is canceled and marked
expired; a finished batch gets its files, service/openai/batch_output.py) the
dispatcher's tick does with nobody reading (service/openai/batch_tick.py); a read
that comes first does it too, once.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from flask import Response, g, jsonify, request

from service.api.context import current_key, db, runtime
from service.api.errors import ApiError
from service.api.parsing.bodies import text_problems
from service.api.parsing.submit import check_webhook
from service.core.ids import new_id
from service.core.tables import Batch, OpenAIBatch, utcnow
from service.lifecycle import batches as crud
from service.lifecycle.jobs import publish_jobs
from service.lifecycle.status import BatchStatus
from service.openai import records
from service.openai.batch_output import finalize
from service.openai.routes.batch_lines import ENDPOINTS, parse_lines
from service.openai.routes.blueprint import OpenAIError, bad_request, bp, json_body
from service.openai.routes.files import owned_file

# `webhook` is ours (`extra_body` in the client): the batch's `batch.completed` event.
CREATE_KEYS = {"input_file_id", "endpoint", "completion_window", "metadata", "webhook"}
METADATA_KEYS, METADATA_KEY_CHARS, METADATA_VALUE_CHARS = 16, 64, 512  # OpenAI's limits


def _ts(moment: datetime | None) -> int | None:
    return int(moment.timestamp()) if moment is not None else None


def status_of(record: OpenAIBatch, batch: Batch | None) -> str:
    if record.failed_at is not None or batch is None:
        return "failed"
    ours = BatchStatus(batch.status)
    if record.finalized_at is not None:
        if record.expired_at is not None:
            return "expired"
        return "cancelled" if ours == BatchStatus.CANCELED else "completed"
    if ours.is_terminal or record.expired_at is not None:
        return "finalizing"
    return "cancelling" if ours == BatchStatus.CANCELING else "in_progress"


def batch_object(record: OpenAIBatch, batch: Batch | None) -> dict[str, Any]:
    status = status_of(record, batch)
    done = record.finalized_at
    counts = {"total": 0, "completed": 0, "failed": 0}
    if batch is not None:
        # Canceled and expired requests are in the error file, so they count as failed.
        counts = {"total": batch.total, "completed": batch.n_succeeded,
                  "failed": batch.n_failed + batch.n_canceled}
    return {
        "id": record.id, "object": "batch", "endpoint": record.endpoint,
        "errors": record.errors, "input_file_id": record.input_file_id,
        "completion_window": record.completion_window, "status": status,
        "output_file_id": record.output_file_id, "error_file_id": record.error_file_id,
        "created_at": _ts(record.created_at),
        "in_progress_at": _ts(record.created_at) if batch is not None else None,
        "expires_at": _ts(record.expires_at),
        "finalizing_at": _ts(batch.completed_at) if batch is not None else None,
        "completed_at": _ts(done) if status == "completed" else None,
        "failed_at": _ts(record.failed_at), "expired_at": _ts(record.expired_at),
        "cancelling_at": _ts(record.cancelling_at),
        "cancelled_at": _ts(done) if status == "cancelled" else None,
        "request_counts": counts, "metadata": record.metadata_ or None,
    }


def _owned(batch_id: str) -> tuple[OpenAIBatch, Batch | None]:
    found = records.get_record(session=db(), api_key_id=current_key().id, record_id=batch_id)
    if found is None:
        raise OpenAIError(404, f"No batch found with id '{batch_id[:100]}'.", param="batch_id")
    return found


def _current(batch_id: str) -> dict[str, Any]:
    """The batch object, after expiring or finalizing it if its time has come."""
    record, batch = _owned(batch_id)
    session = db()
    if records.expire_if_due(session=session, record=record, batch=batch, now=utcnow()):
        session.commit()
        record, batch = _owned(batch_id)
    if (batch is not None and record.finalized_at is None
            and BatchStatus(batch.status).is_terminal):
        rt = runtime()
        finalize(session=session, storage=rt.storage, settings=rt.settings,
                 record_id=record.id)
        record, batch = _owned(batch_id)
    return batch_object(record, batch)


def _metadata(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    ok = isinstance(value, dict) and len(value) <= METADATA_KEYS and all(
        isinstance(k, str) and len(k) <= METADATA_KEY_CHARS and isinstance(v, str)
        and len(v) <= METADATA_VALUE_CHARS for k, v in value.items())
    if ok and text_problems(value):
        raise bad_request("metadata must not contain NUL or invalid characters", "metadata")
    if not ok:
        raise bad_request(f"metadata holds at most {METADATA_KEYS} string values "
                          f"(keys up to {METADATA_KEY_CHARS} characters, values up to "
                          f"{METADATA_VALUE_CHARS})", "metadata")
    return value


def _webhook(value: Any) -> str | None:
    """The SSRF guard /v1 applies at submit (service/webhooks/ssrf.py)."""
    if value is None:
        return None
    if not isinstance(value, str) or not 0 < len(value) <= 2048 or text_problems(value):
        raise bad_request("webhook must be a URL of at most 2048 characters", "webhook")
    try:
        check_webhook(value, runtime().settings)
    except ApiError as exc:
        raise bad_request(f"webhook: {exc.details[0]['message'] if exc.details else exc}",
                          "webhook") from exc
    return value


@bp.post("/batches")
def create_batch() -> Response:
    rt = runtime()
    g.rate = rt.limiter.check(current_key().id)
    body = json_body()
    for name in body:
        if name not in CREATE_KEYS:
            raise bad_request(f"Unrecognized request argument supplied: {str(name)[:100]}",
                              name)
    endpoint = body.get("endpoint")
    if not isinstance(endpoint, str) or endpoint not in ENDPOINTS:
        raise bad_request(f"endpoint must be one of: {', '.join(ENDPOINTS)}", "endpoint")
    window = body.get("completion_window")
    if not isinstance(window, str) or window not in records.COMPLETION_WINDOWS:
        raise bad_request("completion_window must be 24h", "completion_window")
    metadata = _metadata(body.get("metadata"))
    webhook = _webhook(body.get("webhook"))
    file_id = body.get("input_file_id")
    if not isinstance(file_id, str) or not file_id:
        raise bad_request("input_file_id is required", "input_file_id")
    source = owned_file(file_id, "input_file_id")
    if source.purpose != "batch":
        raise bad_request(f"file {file_id} has purpose {source.purpose}, not batch",
                          "input_file_id")
    parsed = parse_lines(rt.storage.get(source.key), endpoint, rt.settings.batch_max_lines)
    session = db()
    fields: dict[str, Any] = {
        "session": session, "api_key_id": current_key().id, "endpoint": endpoint,
        "input_file_id": file_id, "completion_window": window, "metadata": metadata}
    if parsed.errors:  # nothing is enqueued; the batch is `failed`, as OpenAI reports it
        record = records.create_record(record_id=new_id("batch"), batch_id=None,
                                       errors={"object": "list", "data": parsed.errors},
                                       **fields)
        session.commit()
        return jsonify(batch_object(record, None))
    lines = parsed.lines
    batch, ids = crud.create_batch(session=session, storage=rt.storage,
                                   api_key_id=current_key().id,
                                   specs=[line.spec for line in lines], input_format="jsonl",
                                   webhook=webhook, metadata=metadata)
    record = records.create_record(record_id=batch.id, batch_id=batch.id, **fields)
    session.commit()
    publish_jobs(session=session, celery=rt.celery,
                 wakeups=crud.wakeups(ids, [line.job.body.model for line in lines],
                                      rt.settings.batch_wakeups),
                 job_ids=ids, max_retries=rt.settings.publish_max_retries)
    session.commit()
    return jsonify(batch_object(record, batch))


@bp.get("/batches/<batch_id>")
def read_batch(batch_id: str) -> Response:
    return jsonify(_current(batch_id))


@bp.get("/batches")
def list_batches() -> Response:
    raw = request.args.get("limit", "20")
    if not raw.isdigit() or not 1 <= int(raw) <= 100:
        raise bad_request("limit must be an integer from 1 to 100", "limit")
    rows, has_more = records.list_records(session=db(), api_key_id=current_key().id,
                                          limit=int(raw),
                                          after=request.args.get("after") or None)
    data = [_current(record.id) for record, _ in rows]
    return jsonify({"object": "list", "data": data,
                    "first_id": data[0]["id"] if data else None,
                    "last_id": data[-1]["id"] if data else None, "has_more": has_more})


@bp.post("/batches/<batch_id>/cancel")
def cancel_batch(batch_id: str) -> Response:
    record, batch = _owned(batch_id)
    if batch is not None and not BatchStatus(batch.status).is_terminal:
        records.cancel(session=db(), record=record, batch=batch)
        db().commit()
    return jsonify(_current(batch_id))
