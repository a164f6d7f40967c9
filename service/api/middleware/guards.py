"""Checks on the URL itself, before any route sees it (one place, every route).

Ids, cursors and filters go into SQL as text, and Postgres text cannot hold a
NUL: `/v1/jobs/job_%00x` used to reach the driver and fail there as a 500. An id
with a NUL names nothing that can exist (404); a query parameter with one is a
bad filter or cursor (422 naming it). Over-long URLs get our 414 instead of a
server's HTML page.
"""

from __future__ import annotations

from typing import Any

from flask import request
from werkzeug.routing import Map

from service.api.errors import ApiError, validation_error
from service.api.parsing.bodies import printable, text_error

# Well under gunicorn's own request-line limit (service/entry/server.py raises it to
# 8190), so every over-long URL that reaches the app gets the JSON error shape.
MAX_URL_CHARS = 4096


class StrictMap(Map):
    """No slash merging: `/files//etc/passwd` is a 404, not a 308 redirect to another path."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("merge_slashes", False)
        super().__init__(*args, **kwargs)


def check_url() -> None:
    """A `before_request` hook: raise ApiError for a URL no route may see."""
    raw = request.environ.get("RAW_URI") or request.environ.get("REQUEST_URI") or ""
    if max(len(raw), len(request.full_path)) > MAX_URL_CHARS:
        raise ApiError(414, "uri_too_long", f"the URL is longer than {MAX_URL_CHARS} characters")
    for name, value in (request.view_args or {}).items():
        if isinstance(value, str) and text_error(value):
            raise ApiError(404, "not_found", f"no such {name.removesuffix('_id')}")
    bad = []
    for name, value in request.args.items(multi=True):
        problem = text_error(name) or text_error(value)
        if problem:
            bad.append({"field": printable(name), "message": problem})
    if bad:
        raise validation_error(bad)
