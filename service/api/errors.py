"""Every error a request raises, as the ApiError it answers with, and the one JSON error
shape it is written in; a face with a shape of its own (the OpenAI routes) plugs that
in with `own_error_shape`."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import redis
from flask import Blueprint, Flask, Response, jsonify, request
from kombu.exceptions import OperationalError as BrokerError
from sqlalchemy import exc as sa
from werkzeug.exceptions import HTTPException, MethodNotAllowed

from service.api.schemas.responses import ErrorBody, ErrorResponse
from service.core.storage import StorageError
from service.lifecycle.views import public

log = logging.getLogger(__name__)

# Werkzeug's HTTP errors, by status, as snake_case codes.
_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    411: "length_required",
    413: "body_too_large",
    414: "uri_too_long",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "rate_limited",
    500: "internal_error",
    503: "unavailable",
}


# How long a client should wait before retrying when a dependency is away: about
# the time Postgres or Redis takes to restart.
RETRY_AFTER_SECONDS = 5


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        details: Any = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details
        self.headers = headers or {}


def validation_error(details: list[dict[str, Any]], message: str | None = None) -> ApiError:
    first = details[0] if details else {"field": "body", "message": "invalid"}
    return ApiError(
        422,
        "validation_error",
        message or f"{first['field']}: {first['message']}",
        details,
    )


def unavailable(dependency: str) -> ApiError:
    """503 for a dependency that is down or not answering; the client may retry."""
    return ApiError(
        503,
        f"{dependency}_unavailable",
        f"the {dependency} is unavailable; retry in a few seconds",
        headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
    )


def _is_outage(exc: sa.DBAPIError) -> bool:
    # OperationalError: the server went away, refused, or timed out. InterfaceError: the
    # connection is closed. connection_invalidated: SQLAlchemy saw a disconnect.
    return isinstance(exc, sa.OperationalError | sa.InterfaceError) or exc.connection_invalidated


def as_api_error(exc: Exception) -> ApiError:
    """What a request that raised `exc` answers, whatever the shape it is written in."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, sa.DBAPIError) and _is_outage(exc):
        log.warning("database unavailable: %s", str(exc).splitlines()[0][:300])
        return unavailable("database")
    if isinstance(exc, sa.DataError):
        # A value the database cannot hold that validation let through: still the
        # client's input, and the transaction stored nothing (teardown rolls back).
        log.warning("database refused a value: %s", str(exc).splitlines()[0][:300])
        return ApiError(422, "validation_error", "a value in the request cannot be stored",
                        [{"field": "body", "message": "cannot be stored"}])
    # sa.TimeoutError: the pool had no connection to give in time.
    if isinstance(exc, sa.TimeoutError | sa.DisconnectionError):
        log.warning("database unavailable: %s", exc)
        return unavailable("database")
    if isinstance(exc, BrokerError | redis.RedisError):
        log.warning("broker unavailable: %s", exc)
        return unavailable("broker")
    if isinstance(exc, StorageError):
        log.warning("object store unavailable: %s", exc)
        return unavailable("storage")
    if isinstance(exc, HTTPException):
        status = exc.code or 500
        headers = {}
        if isinstance(exc, MethodNotAllowed) and exc.valid_methods:
            headers["Allow"] = ", ".join(exc.valid_methods)
        message = exc.description or exc.name
        if status == 413:
            # The rest of the body is drained before this goes out (BodyLimit).
            message = f"request body is larger than {request.max_content_length} bytes"
        return ApiError(status, _HTTP_CODES.get(status, "http_error"), message, headers=headers)
    log.error("unhandled error", exc_info=exc)
    return ApiError(500, "internal_error", "the server failed to handle this request")


def error_response(error: ApiError) -> Response:
    """The one JSON error shape of /v1 and everything outside a face of its own."""
    body = ErrorBody(code=error.code, message=error.message)
    if error.details is not None:  # absent, not null, when there are none
        body.details = error.details
    response = jsonify(public(ErrorResponse(error=body)))
    response.status_code = error.status
    for name, value in error.headers.items():
        response.headers[name] = value
    return response


Shape = Callable[[ApiError], Response]
_SHAPES = "janus_error_shapes"  # app.extensions: path prefix -> Shape


def own_error_shape(bp: Blueprint, prefix: str, shape: Shape) -> None:
    """Errors under `prefix` answered in `shape` instead of ours.

    What the blueprint's requests raise goes to its own handler. A URL under `prefix`
    that matches no route (a 404, or a 405 for the wrong method) belongs to no
    blueprint, so Flask hands it to the app's handler, which finds the shape here.
    """
    bp.register_error_handler(Exception, lambda exc: shape(as_api_error(exc)))
    bp.record_once(lambda state: state.app.extensions.setdefault(_SHAPES, {}).update(
        {prefix: shape}))


def register_error_handlers(app: Flask) -> None:
    def answer(exc: Exception) -> Response:
        shapes: dict[str, Shape] = app.extensions.get(_SHAPES, {})
        shape = next((s for p, s in shapes.items() if request.path.startswith(p)),
                     error_response)
        return shape(as_api_error(exc))

    app.register_error_handler(Exception, answer)
