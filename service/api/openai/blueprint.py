"""The one blueprint of the OpenAI-compatible face, mounted at /openai/v1.

Route modules (models, images, chat, files, batches) add their routes to `bp`; every
route needs one of our API keys as the Bearer token, as on /v1.
"""

from __future__ import annotations

import re
from typing import Any

from flask import Blueprint, request

from service.api.auth import require_api_key
from service.api.context import ModelInfo, runtime
from service.api.errors import ApiError
from service.api.openai.errors import OpenAIError, bad_request
from service.api.submit import parse_json

bp = Blueprint("openai", __name__, url_prefix="/openai/v1")
bp.before_request(require_api_key)

_WAIT = re.compile(r"(?:^|[;,\s])wait=(\d{1,9})")


def json_body() -> dict[str, Any]:
    """The request's JSON object (the one parse step of service.api.bodies)."""
    if request.mimetype != "application/json":
        raise bad_request("send a JSON body (Content-Type: application/json)")
    body = parse_json(request.get_data(cache=True), "body", "request body")
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object")
    return body


def hold_seconds() -> int:
    """How long to hold a request for its job: JANUS_OPENAI_WAIT_SECONDS, or less when the
    client asks with `Prefer: wait=N` (e.g. a client whose own timeout is shorter)."""
    limit = runtime().settings.openai_wait_seconds
    match = _WAIT.search(request.headers.get("Prefer", ""))
    return min(int(match.group(1)), limit) if match else limit


def model_info(model: Any, param: str = "model") -> ModelInfo:
    if not isinstance(model, str) or not model:
        raise bad_request("model is required: one of GET /openai/v1/models", param)
    info = runtime().models.get(model)
    if info is None:
        raise OpenAIError(404, f"The model `{model[:200]}` does not exist or you do not have "
                          "access to it.", param=param, code="model_not_found")
    return info


def api_error_param(exc: ApiError, names: dict[str, str]) -> str | None:
    """The OpenAI parameter a check_job refusal is about (`input.num_images` -> `n`)."""
    details = exc.details if isinstance(exc.details, list) else []
    field = details[0].get("field") if details and isinstance(details[0], dict) else None
    if not isinstance(field, str):
        return None
    return names.get(field, names.get(field.split(".")[0] + "." + field.split(".")[-1], field))
