"""Request bodies past the size limit are answered `413`, never with a connection reset.

Two things go wrong without this WSGI middleware:

- An answer sent before the body was read (a `413` on its Content-Length, a `401`) leaves
  the client's unread bytes in the server's socket. Python's clients (requests, httpx,
  the openai client) send the whole body before they read the answer; gunicorn drains
  what is left for at most its keep-alive time (2 s) and then closes, and closing a
  socket with unread data sends a TCP RST: the client, still sending, sees "connection
  reset" instead of the 413. So once the app has answered, and before the answer goes
  out, what is left of the body is read and dropped, up to DRAIN_BYTES and
  DRAIN_SECONDS; past those gunicorn closes the connection (a bound: a client cannot
  make the server read forever).
- A chunked body (no Content-Length) over the limit was cut at the limit by Werkzeug and
  read as if whole (a 400 "not valid JSON", or worse a valid prefix). Here such a body is
  read into a spool first, to the route's limit and one byte more: within the limit the
  app sees it with its Content-Length; past it the app sees a Content-Length over its
  limit and refuses it with the 413 every too-large body gets, in the path's error shape
  (ours on /v1, OpenAI's under /openai/: service/api/errors.py).
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable, Iterable
from typing import IO, Any

from service.core.settings import Settings

log = logging.getLogger(__name__)

DRAIN_BYTES = 1024 * 1024 * 1024  # the most of a refused body read to answer it cleanly
DRAIN_SECONDS = 60.0  # ... and the longest it may take (a slow client's upload)
SPOOL_MEMORY = 1024 * 1024  # a chunked body past this waits on disk, not in memory
READ = 64 * 1024
# Where a body may be as large as a batch upload (the views raise their own limit to it).
BULK_UPLOADS = {("POST", "/v1/batches"), ("POST", "/openai/v1/files")}

StartResponse = Callable[..., Any]


def body_limit(method: str, path: str, settings: Settings) -> int:
    """The most bytes a request's body may hold: what the route's view allows."""
    if (method, path.rstrip("/")) in BULK_UPLOADS:
        return max(settings.batch_max_bytes, settings.max_body_bytes)
    return settings.max_body_bytes


def _has_body(environ: dict[str, Any]) -> bool:
    return bool(environ.get("CONTENT_LENGTH")) or _chunked(environ)


def _chunked(environ: dict[str, Any]) -> bool:
    return (not environ.get("CONTENT_LENGTH")
            and "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower())


def _spool_chunked(environ: dict[str, Any], limit: int) -> None:
    """Read a chunked body (up to limit + 1 bytes) and hand it on with a Content-Length."""
    stream = environ["wsgi.input"]
    spool: IO[bytes] = tempfile.SpooledTemporaryFile(SPOOL_MEMORY)  # noqa: SIM115 - the app reads it
    size = 0
    while size <= limit and (data := stream.read(min(READ, limit + 1 - size))):
        spool.write(data)
        size += len(data)
    spool.seek(0)
    environ["wsgi.input"] = spool
    environ["janus.raw_input"] = stream  # what is left past the limit is drained from here
    environ["CONTENT_LENGTH"] = str(size)  # past the limit: the app answers 413 unread
    del environ["HTTP_TRANSFER_ENCODING"]  # else Werkzeug ignores the Content-Length


def drain(environ: dict[str, Any], max_bytes: int = DRAIN_BYTES,
          seconds: float = DRAIN_SECONDS) -> bool:
    """Read and drop what the app left of the body; True when it was read to its end."""
    stream = environ.get("janus.raw_input") or environ.get("wsgi.input")
    if stream is None:
        return True
    sock = environ.get("gunicorn.socket")
    prior = sock.gettimeout() if sock is not None else None
    deadline = time.monotonic() + seconds
    left = max_bytes
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or left <= 0:
                return False
            if sock is not None:
                sock.settimeout(remaining)  # a stalled client cannot hold the read forever
            data = stream.read(min(READ, left))
            if not data:
                return True
            left -= len(data)
    except Exception:  # noqa: BLE001 - timed out, a bad chunk, the client gone: stop here
        return False
    finally:
        if sock is not None:
            try:
                sock.settimeout(prior)
            except OSError:
                pass


class BodyLimit:
    """WSGI middleware around the Flask app (create_app installs it)."""

    def __init__(self, app: Callable[..., Iterable[bytes]], settings: Settings) -> None:
        self.app = app
        self.settings = settings

    def __call__(self, environ: dict[str, Any], start_response: StartResponse
                 ) -> Iterable[bytes]:
        if not _has_body(environ):
            return self.app(environ, start_response)
        if _chunked(environ):
            limit = body_limit(environ.get("REQUEST_METHOD", ""), environ.get("PATH_INFO", ""),
                               self.settings)
            _spool_chunked(environ, limit)
        held: list[tuple[Any, ...]] = []
        returned = False

        def hold(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            if returned:  # an app that starts its answer lazily: no drain can come first
                return start_response(status, headers, exc_info)
            held[:] = [(status, headers, exc_info)]
            return _no_write

        result = self.app(environ, hold)
        returned = True
        if held:
            if not drain(environ):  # the server closes the connection (gunicorn does)
                log.info("%s %s: the request body was not read to its end within %d bytes "
                         "and %.0f s", environ.get("REQUEST_METHOD"), environ.get("PATH_INFO"),
                         DRAIN_BYTES, DRAIN_SECONDS)
            start_response(*held[0])
        return result


def _no_write(_data: bytes) -> None:
    raise RuntimeError("the legacy WSGI write() callable is not supported")
