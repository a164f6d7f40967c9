"""The web console: static HTML, CSS and JavaScript served at `/console`.

No build step and nothing fetched from elsewhere, so the page works offline. Loading
it needs no key: the page asks for one and sends it as the Bearer header on every
`/v1` call it makes, exactly like any other client.
"""

from __future__ import annotations

from pathlib import Path

from flask import Blueprint, Response

from service.api.errors import ApiError

bp = Blueprint("console", __name__)

STATIC = Path(__file__).resolve().parent / "static"
_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",  # ES modules need a JavaScript type
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
# Images come from presigned object-store URLs on another origin (or inline previews);
# scripts, styles and API calls only from here. No inline script, no framing.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data: blob: http: https:; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)
# A fixed list read once: a request names one of these files or nothing at all, so
# no path from a URL ever reaches the disk.
ASSETS = {p.name for p in STATIC.iterdir() if p.is_file() and p.suffix in _TYPES}


def _serve(name: str) -> Response:
    path = STATIC / name
    response = Response(path.read_bytes(), content_type=_TYPES[path.suffix])
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["X-Frame-Options"] = "DENY"
    # Small files: revalidate each load, so an upgrade never runs a stale script.
    response.headers["Cache-Control"] = "no-cache"
    return response


@bp.get("/console")
def index() -> Response:
    return _serve("index.html")


@bp.get("/console/<name>")
def asset(name: str) -> Response:
    if name not in ASSETS or name == "index.html":
        raise ApiError(404, "not_found", "no such console file")
    return _serve(name)
