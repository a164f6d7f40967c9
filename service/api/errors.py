"""The one JSON error shape, produced here and nowhere else."""

from __future__ import annotations

import logging
from typing import Any

import redis
from flask import Flask, Response, has_request_context, jsonify, request
from kombu.exceptions import OperationalError as BrokerError
from sqlalchemy import exc as sa
from werkzeug.exceptions import HTTPException

from service.api.responses import ErrorBody, ErrorResponse
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


def error_response(
    status: int, code: str, message: str, details: Any = None,
    headers: dict[str, str] | None = None, param: str | None = None,
) -> Response:
    if has_request_context() and request.path.startswith("/openai/"):
        # The OpenAI-compatible face answers in OpenAI's error shape (one place, here).
        from service.api.openai.errors import openai_response

        return openai_response(status, code, message, details, headers, param)
    body = ErrorBody(code=code, message=message)
    if details is not None:  # absent, not null, when there are none
        body.details = details
    response = jsonify(public(ErrorResponse(error=body)))
    response.status_code = status
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def unavailable(dependency: str) -> Response:
    """503 for a dependency that is down or not answering; the client may retry."""
    return error_response(
        503,
        f"{dependency}_unavailable",
        f"the {dependency} is unavailable; retry in a few seconds",
        headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
    )


def _is_outage(exc: sa.DBAPIError) -> bool:
    # OperationalError: the server went away, refused, or timed out. InterfaceError: the
    # connection is closed. connection_invalidated: SQLAlchemy saw a disconnect.
    return isinstance(exc, sa.OperationalError | sa.InterfaceError) or exc.connection_invalidated


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(sa.DBAPIError)
    def _database_error(exc: sa.DBAPIError) -> Response:
        if _is_outage(exc):
            log.warning("database unavailable: %s", str(exc).splitlines()[0][:300])
            return unavailable("database")
        if isinstance(exc, sa.DataError):
            # A value the database cannot hold that validation let through: still the
            # client's input, and the transaction stored nothing (teardown rolls back).
            log.warning("database refused a value: %s", str(exc).splitlines()[0][:300])
            return error_response(422, "validation_error", "a value in the request cannot be "
                                  "stored", [{"field": "body", "message": "cannot be stored"}])
        return _unexpected(exc)

    @app.errorhandler(sa.TimeoutError)  # the pool had no connection to give in time
    @app.errorhandler(sa.DisconnectionError)
    def _database_away(exc: Exception) -> Response:
        log.warning("database unavailable: %s", exc)
        return unavailable("database")

    @app.errorhandler(BrokerError)
    @app.errorhandler(redis.RedisError)
    def _broker_away(exc: Exception) -> Response:
        log.warning("broker unavailable: %s", exc)
        return unavailable("broker")

    @app.errorhandler(StorageError)
    def _storage_away(exc: StorageError) -> Response:
        log.warning("object store unavailable: %s", exc)
        return unavailable("storage")

    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError) -> Response:
        return error_response(exc.status, exc.code, exc.message, exc.details, exc.headers,
                              getattr(exc, "param", None))

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        headers = {}
        if status == 405 and exc.valid_methods:  # type: ignore[attr-defined]
            headers["Allow"] = ", ".join(exc.valid_methods)  # type: ignore[attr-defined]
        message = exc.description or exc.name
        if status == 413:
            # The rest of the body is drained before this goes out (service/api/bodylimit.py).
            message = f"request body is larger than {request.max_content_length} bytes"
        return error_response(
            status, _HTTP_CODES.get(status, "http_error"), message, headers=headers
        )

    @app.errorhandler(Exception)
    def _any_error(exc: Exception) -> Response:
        return _unexpected(exc)


def _unexpected(exc: Exception) -> Response:
    log.error("unhandled error", exc_info=exc)
    return error_response(500, "internal_error", "the server failed to handle this request")
