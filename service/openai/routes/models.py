"""GET /openai/v1/models and /models/{id}: the models this deployment serves."""

from __future__ import annotations

import time
from typing import Any

from flask import Response, jsonify

from service.api.context import ModelInfo, runtime
from service.openai.routes.blueprint import bp, model_info

OWNED_BY = "deepseek-ai"
_STARTED = int(time.time())  # OpenAI's `created`; ours is when this process started


def model_object(info: ModelInfo) -> dict[str, Any]:
    return {"id": info.id, "object": "model", "created": _STARTED, "owned_by": OWNED_BY}


@bp.get("/models")
def list_models() -> Response:
    data = [model_object(info) for info in runtime().models.values()]
    return jsonify({"object": "list", "data": data})


@bp.get("/models/<model_id>")
def read_model(model_id: str) -> Response:
    return jsonify(model_object(model_info(model_id)))
