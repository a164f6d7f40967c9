"""The one blueprint of the OpenAI-compatible face, mounted at /openai/v1, its error
shape, and the checks its routes share.

Every route needs one of our API keys as the Bearer token, as on /v1. Every error
under /openai/ is written in OpenAI's shape, `{"error": {"message", "type", "param",
"code"}}`, with the status codes OpenAI uses, so the official client raises its own
typed exceptions (BadRequestError, AuthenticationError, NotFoundError, ...): refusals
before any route runs (auth, rate limit, body too large, an outage, an unknown path)
too. The body itself is `error_body` (service/openai/render.py), which batch result
files hold too.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify, request

from service.api.context import ModelInfo, runtime
from service.api.errors import ApiError, own_error_shape
from service.api.middleware.auth import require_api_key
from service.api.parsing.submit import parse_json
from service.openai.render import error_body

PREFIX = "/openai/"
# Our statuses that OpenAI does not use for the same refusal.
_STATUS = {422: 400, 415: 400}
# Our codes that OpenAI names otherwise (status, code).
_CODES = {
    "unauthorized": (401, "invalid_api_key"),
    "rate_limited": (429, "rate_limit_exceeded"),
    "unknown_model": (404, "model_not_found"),
    "validation_error": (400, "invalid_value"),
    "invalid_json": (400, "invalid_json"),
}


class OpenAIError(ApiError):
    """An error raised by an OpenAI route, already in OpenAI's terms.

    `param` names the request field at fault (OpenAI's name, e.g. `n`, `messages`);
    `retry=False` adds `x-should-retry: false` so the client does not resend a request
    that already created a job.
    """

    def __init__(
        self, status: int, message: str, *, param: str | None = None, code: str | None = None,
        headers: dict[str, str] | None = None, retry: bool | None = None,
    ) -> None:
        headers = dict(headers or {})
        if retry is not None:
            headers["x-should-retry"] = "true" if retry else "false"
        super().__init__(status, code or "", message, headers=headers)
        self.param = param


def bad_request(message: str, param: str | None = None, code: str | None = None) -> OpenAIError:
    return OpenAIError(400, message, param=param, code=code)


def _param_and_message(message: str, details: Any) -> tuple[str | None, str]:
    """The first detail's field as `param`; every detail in the message."""
    if not isinstance(details, list) or not details or not isinstance(details[0], dict):
        return None, message
    param = details[0].get("field")
    parts = [f"{d.get('field')}: {d.get('message')}" for d in details[:20]
             if isinstance(d, dict)]
    return (str(param) if param is not None else None), "; ".join(parts) or message


def openai_response(error: ApiError) -> Response:
    status, code, message = error.status, error.code, error.message
    if code in _CODES:
        status, code = _CODES[code][0] if status < 500 else status, _CODES[code][1]
    status = _STATUS.get(status, status)
    param = error.param if isinstance(error, OpenAIError) else None
    if param is None:
        param, message = _param_and_message(message, error.details)
    response = jsonify(error_body(message, status, param, code or None))
    response.status_code = status
    for name, value in error.headers.items():
        response.headers[name] = value
    return response


bp = Blueprint("openai", __name__, url_prefix="/openai/v1")
bp.before_request(require_api_key)
own_error_shape(bp, PREFIX, openai_response)


def json_body() -> dict[str, Any]:
    """The request's JSON object (the one parse step of service.api.parsing.bodies)."""
    if request.mimetype != "application/json":
        raise bad_request("send a JSON body (Content-Type: application/json)")
    body = parse_json(request.get_data(cache=True), "body", "request body")
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object")
    return body


def model_info(model: Any, param: str = "model") -> ModelInfo:
    if not isinstance(model, str) or not model:
        raise bad_request("model is required: one of GET /openai/v1/models", param)
    info = runtime().models.get(model)
    if info is None:
        raise OpenAIError(404, f"The model `{model[:200]}` does not exist or you do not have "
                          "access to it.", param=param, code="model_not_found")
    return info

