"""GET /v1/jobs/{id}/webhook-deliveries: every webhook try for one job, oldest first."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify
from sqlalchemy import func, select

from service import jobs as crud
from service.api.auth import require_api_key
from service.api.context import current_key, db
from service.api.errors import ApiError
from service.core.tables import WebhookDelivery, WebhookEvent
from service.jobview import iso

bp = Blueprint("deliveries", __name__)
bp.before_request(require_api_key)

MAX_ROWS = 1000  # a job has at most four events of at most len(schedule) tries each


def _row(delivery: WebhookDelivery, event: WebhookEvent, attempt: int) -> dict[str, Any]:
    return {
        "id": str(delivery.id),
        "object": "webhook_delivery",
        "event_id": event.id,
        "type": event.type,
        "url": event.url,
        "attempt": attempt,
        "attempted_at": iso(delivery.attempted_at),
        "status_code": delivery.status_code,
        "error": delivery.error,
        "duration_ms": delivery.duration_ms,
        "next_attempt_at": iso(delivery.next_attempt_at),
        "event_status": event.status,
    }


@bp.get("/v1/jobs/<job_id>/webhook-deliveries")
def list_deliveries(job_id: str) -> Response:
    key = current_key()
    session = db()
    if crud.get_job(session=session, api_key_id=key.id, job_id=job_id) is None:
        raise ApiError(404, "not_found", f"no job {job_id!r}")
    # `attempt` is the try's rank within its event: the table keeps no number of its own.
    attempt = (
        func.row_number()
        .over(partition_by=WebhookDelivery.event_id, order_by=WebhookDelivery.id)
        .label("attempt")
    )
    rows = session.execute(
        select(WebhookDelivery, WebhookEvent, attempt)
        .join(WebhookEvent, WebhookEvent.id == WebhookDelivery.event_id)
        .where(WebhookEvent.job_id == job_id, WebhookEvent.api_key_id == key.id)
        .order_by(WebhookDelivery.id)
        .limit(MAX_ROWS)
    ).all()
    return jsonify({"object": "list", "data": [_row(d, e, n) for d, e, n in rows]})
