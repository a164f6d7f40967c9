"""GET /v1/models: what this deployment serves, with live worker and queue counts."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from service import jobs as crud
from service.api.auth import require_api_key
from service.api.context import db, runtime

bp = Blueprint("catalog", __name__)
bp.before_request(require_api_key)


@bp.get("/v1/models")
def list_models() -> Response:
    rt = runtime()
    session = db()
    counts = crud.counts_by_model(session=session)
    workers = crud.live_workers(
        session=session, stale_after=3 * rt.settings.worker_heartbeat_seconds
    )
    data = [
        {
            "id": info.id,
            "object": "model",
            "family": info.family,
            "tasks": list(info.tasks),
            "defaults": info.defaults,
            "workers": workers.get(info.id, 0),
            "queued": counts.get((info.id, "queued"), 0),
            "running": counts.get((info.id, "running"), 0),
        }
        for info in rt.models.values()
    ]
    return jsonify({"object": "list", "data": data})
