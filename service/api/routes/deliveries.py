"""GET /v1/jobs/{id}/webhook-deliveries: every webhook try for one job, oldest first."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify
from sqlalchemy import func, select

from service.api.context import current_key, db
from service.api.errors import ApiError
from service.api.middleware.auth import require_api_key
from service.api.schemas.responses import WebhookDelivery, WebhookDeliveryList
from service.core.tables import WebhookDelivery as WebhookDeliveryRow
from service.core.tables import WebhookEvent
from service.lifecycle import jobs as crud
from service.lifecycle.views import public

bp = Blueprint("deliveries", __name__)
bp.before_request(require_api_key)

MAX_ROWS = 1000  # a job has at most four events of at most len(schedule) tries each


def _row(delivery: WebhookDeliveryRow, event: WebhookEvent, attempt: int) -> WebhookDelivery:
    return WebhookDelivery(
        id=str(delivery.id),
        object="webhook_delivery",
        event_id=event.id,
        type=event.type,
        url=event.url,
        attempt=attempt,
        attempted_at=delivery.attempted_at,
        status_code=delivery.status_code,
        error=delivery.error,
        duration_ms=delivery.duration_ms,
        next_attempt_at=delivery.next_attempt_at,
        event_status=event.status,  # type: ignore[arg-type]
    )


@bp.get("/v1/jobs/<job_id>/webhook-deliveries")
def list_deliveries(job_id: str) -> Response:
    key = current_key()
    session = db()
    if crud.get_job(session=session, api_key_id=key.id, job_id=job_id) is None:
        raise ApiError(404, "not_found", f"no job {job_id!r}")
    # `attempt` is the try's rank within its event: the table keeps no number of its own.
    attempt = (
        func.row_number()
        .over(partition_by=WebhookDeliveryRow.event_id, order_by=WebhookDeliveryRow.id)
        .label("attempt")
    )
    rows = session.execute(
        select(WebhookDeliveryRow, WebhookEvent, attempt)
        .join(WebhookEvent, WebhookEvent.id == WebhookDeliveryRow.event_id)
        .where(WebhookEvent.job_id == job_id, WebhookEvent.api_key_id == key.id)
        .order_by(WebhookDeliveryRow.id)
        .limit(MAX_ROWS)
    ).all()
    page = WebhookDeliveryList(object="list", data=[_row(d, e, n) for d, e, n in rows])
    return jsonify(public(page))
