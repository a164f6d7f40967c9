"""GET /v1/models: what this deployment serves, with live worker and queue counts."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from service.api.context import db, runtime
from service.api.middleware.auth import require_api_key
from service.api.schemas.responses import ModelList, ModelObject
from service.lifecycle import stats
from service.lifecycle.status import JobStatus
from service.lifecycle.views import public

bp = Blueprint("catalog", __name__)
bp.before_request(require_api_key)


@bp.get("/v1/models")
def list_models() -> Response:
    rt = runtime()
    session = db()
    counts = stats.counts_by_model(session=session)
    workers = stats.live_workers(
        session=session, stale_after=3 * rt.settings.worker_heartbeat_seconds
    )
    data = [
        ModelObject(
            id=info.id,
            object="model",
            family=info.family,
            tasks=list(info.tasks),  # type: ignore[arg-type]
            defaults=info.defaults,
            workers=workers.get(info.id, 0),
            queued=counts.get((info.id, JobStatus.QUEUED), 0),
            running=counts.get((info.id, JobStatus.RUNNING), 0),
        )
        for info in rt.models.values()
    ]
    return jsonify(public(ModelList(object="list", data=data)))
