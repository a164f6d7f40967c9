"""Unauthenticated operational endpoints: liveness, readiness, metrics, OpenAPI."""

from __future__ import annotations

from flask import Blueprint, Response, current_app, jsonify
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from service.api.context import runtime
from service.api.errors import ApiError
from service.api.schemas.openapi import openapi_document
from service.core.broker import ping as broker_ping
from service.core.storage import StorageError

bp = Blueprint("ops", __name__)


@bp.get("/healthz")
def healthz() -> Response:
    return jsonify({"status": "ok"})


@bp.get("/readyz")
def readyz() -> Response:
    rt = runtime()
    failed: dict[str, str] = {}
    try:
        with rt.db.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:  # any driver error means "not ready"
        failed["database"] = type(exc).__name__
    try:
        broker_ping(rt.celery)
    except Exception as exc:  # any client error means "not ready"
        failed["broker"] = type(exc).__name__
    try:
        rt.storage.ping()
    except StorageError as exc:
        failed["storage"] = str(exc)[:200]
    if failed:
        raise ApiError(
            503, "not_ready", f"not ready: {', '.join(sorted(failed))}", {"failed": failed}
        )
    return jsonify(
        {"status": "ready", "checks": {"database": "ok", "broker": "ok", "storage": "ok"}}
    )


@bp.get("/metrics")
def metrics() -> Response:
    registry = current_app.extensions["janus_metrics"].registry
    return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)


@bp.get("/openapi.json")
def openapi() -> Response:
    return jsonify(openapi_document())
