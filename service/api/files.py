"""Serving local-disk storage through signed, expiring URLs (embedded mode only)."""

from __future__ import annotations

import mimetypes

from flask import Blueprint, Response, request

from service.api.context import runtime
from service.api.errors import ApiError
from service.core.storage import LocalStorage

bp = Blueprint("files", __name__)


@bp.get("/files/<path:key>")
def read_file(key: str) -> Response:
    storage = runtime().storage
    if not isinstance(storage, LocalStorage):
        raise ApiError(404, "not_found", "files are served by the object store")
    try:
        expires = int(request.args.get("expires", ""))
    except ValueError:
        expires = 0
    if not storage.verify(key, expires, request.args.get("sig", "")):
        raise ApiError(403, "forbidden", "this URL is invalid or has expired")
    try:
        data = storage.get(key)
    except KeyError as exc:
        raise ApiError(404, "not_found", "no such file") from exc
    content_type = mimetypes.guess_type(key)[0] or "application/octet-stream"
    response = Response(data, mimetype=content_type)
    response.headers["Cache-Control"] = "private, max-age=300"
    return response
