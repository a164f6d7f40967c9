"""OpenAI's error shape for every error under /openai/v1: `{"error": {"message", "type",
"param", "code"}}` with the status codes OpenAI uses, so the official client raises its
own typed exceptions (BadRequestError, AuthenticationError, NotFoundError, ...).

`service.api.errors` renders every error; for /openai/ paths it hands the status, code,
message and details to `openai_response` here, so refusals that happen before any
OpenAI route runs (auth, rate limit, body too large, an outage, an unknown path) come
out in this shape too. The body itself is `error_body` (service/openai_wire/render.py),
which batch result files hold too.
"""

from __future__ import annotations

from typing import Any

from flask import Response, jsonify

from service.api.errors import ApiError
from service.openai_wire.render import error_body

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


def openai_response(
    status: int, code: str, message: str, details: Any = None,
    headers: dict[str, str] | None = None, param: str | None = None,
) -> Response:
    if code in _CODES:
        status, code = _CODES[code][0] if status < 500 else status, _CODES[code][1]
    status = _STATUS.get(status, status)
    if param is None:
        param, message = _param_and_message(message, details)
    response = jsonify(error_body(message, status, param, code or None))
    response.status_code = status
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response
