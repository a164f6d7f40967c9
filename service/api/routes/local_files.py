"""Serving local-disk storage through signed, expiring URLs (embedded mode only)."""

from __future__ import annotations

import mimetypes

from flask import Blueprint, Response, request

from service.api.context import runtime
from service.api.errors import ApiError
from service.core.storage import LocalStorage, StorageError

bp = Blueprint("files", __name__)


def _storable_key(key: str) -> bool:
    """Only keys we write (`jobs/<id>/<n>.png`): no `..`, `.` or empty segment, no backslash.

    Checked before the signature, so even a validly signed `../` never reaches the disk.
    """
    parts = key.split("/")
    return "\\" not in key and all(part not in ("", ".", "..") for part in parts)


@bp.get("/files/<path:key>")
def read_file(key: str) -> Response:
    storage = runtime().storage
    if not isinstance(storage, LocalStorage):
        raise ApiError(404, "not_found", "files are served by the object store")
    if not _storable_key(key):
        raise ApiError(404, "not_found", "no such file")
    raw_expires = request.args.get("expires", "")
    # int() of thousands of digits raises; a dozen is already far past any real expiry.
    expires = int(raw_expires) if raw_expires.isdigit() and len(raw_expires) <= 12 else 0
    if not storage.verify(key, expires, request.args.get("sig", "")):
        raise ApiError(403, "forbidden", "this URL is invalid or has expired")
    try:
        data = storage.get(key)
    except (KeyError, StorageError) as exc:
        raise ApiError(404, "not_found", "no such file") from exc
    content_type = mimetypes.guess_type(key)[0] or "application/octet-stream"
    response = Response(data, mimetype=content_type)
    response.headers["Cache-Control"] = "private, max-age=300"
    return response
