"""Finished jobs as OpenAI's response bodies: ImagesResponse, chat.completion, and the
error body of a job that failed or was canceled.

The synchronous routes answer with these and every line of a batch's result files holds
one, so a request gets the same body whichever way it came. `job` is anything with the
job row's attributes (an ORM Job or a selected row). Functions that need the model
checkpoints take `models` (id -> checkpoint path, `Settings.models`): the dispatcher
has no app to ask.
"""

from __future__ import annotations

import base64
import functools
import math
import time
from typing import Any

from service.core.storage import Storage
from service.lifecycle.status import JobStatus

CHARS_PER_TOKEN = 4  # the estimate for rows without the worker's counts: no tokenizer here
DEFAULT_IMAGE_SIZE = 384
# Where a checkpoint's config.json says how many pixels a side its images have:
# transformers' Janus layout, DeepSeek's original Janus layout, JanusFlow.
_SIZE_PATHS = (
    ("vision_config", "image_size"),
    ("vision_config", "params", "image_size"),
    ("vision_und_enc_config", "params", "image_size"),
    ("gen_vision_config", "params", "image_size"),
)


def image_size(model_id: str, models: dict[str, str]) -> int:
    """Pixels a side of the model's images, read once from its config.json."""
    return _read_size(models.get(model_id, ""))


@functools.lru_cache(maxsize=256)
def _read_size(path: str) -> int:
    from service.models import catalog

    try:
        config: Any = catalog.read_config(path)
    except catalog.CheckpointError:
        return DEFAULT_IMAGE_SIZE  # the API may not see the workers' disks
    for keys in _SIZE_PATHS:
        value = config
        for key in keys:
            value = value.get(key) if isinstance(value, dict) else None
        if isinstance(value, int) and value > 0:
            return value
    return DEFAULT_IMAGE_SIZE


def created(job: Any) -> int:
    moment = job.completed_at or job.created_at
    return int(moment.timestamp()) if moment is not None else int(time.time())


def images_body(job: Any, response_format: str, storage: Storage, expires_in: int
                ) -> dict[str, Any]:
    """`{"created", "data": [{"url"|"b64_json", "revised_prompt": null}]}`."""
    data = []
    for image in (job.output or {}).get("images", []):
        if response_format == "b64_json":
            item = {"b64_json": base64.b64encode(storage.get(image["key"])).decode()}
        else:
            item = {"url": storage.url(image["key"], expires_in)}
        data.append({**item, "revised_prompt": None})
    return {"created": created(job), "data": data}


def _tokens(text: str) -> int:
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def usage(job: Any, models: dict[str, str]) -> dict[str, int]:
    """Token counts: the worker's own (`output.usage`: the prompt as the model consumed
    it, the tokens it sampled). Jobs finished before workers counted get an estimate:
    the image's tokens exactly, about four characters a text token (`models`: for
    image_size)."""
    given = (job.output or {}).get("usage")
    if isinstance(given, dict) and {"prompt_tokens", "completion_tokens"} <= set(given):
        prompt, completion = int(given["prompt_tokens"]), int(given["completion_tokens"])
    else:
        side = image_size(job.model, models)
        data = job.input or {}
        text = data.get("question") or "".join(
            str(m.get("content", "")) for m in data.get("messages") or [])
        prompt = (side // 16) ** 2 + _tokens(text)
        completion = _tokens((job.output or {}).get("text", ""))
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion}


def completion_id(job_id: str) -> str:
    return f"chatcmpl-{job_id}"


def finish_reason(job: Any) -> str:
    reason = (job.output or {}).get("finish_reason")
    return reason if reason in ("stop", "length") else "stop"


def chat_completion(job: Any, models: dict[str, str]) -> dict[str, Any]:
    message = {"role": "assistant", "content": (job.output or {}).get("text", ""),
               "refusal": None}
    return {
        "id": completion_id(job.id), "object": "chat.completion", "created": created(job),
        "model": job.model,
        "choices": [{"index": 0, "message": message, "logprobs": None,
                     "finish_reason": finish_reason(job)}],
        "usage": usage(job, models), "system_fingerprint": None,
    }


def _error_type(status: int) -> str:
    if status == 429:
        return "requests"  # what OpenAI's rate-limit errors carry
    if status >= 500:
        return "server_error"
    return "invalid_request_error"


def error_body(message: str, status: int, param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    """OpenAI's error shape: `{"error": {"message", "type", "param", "code"}}`."""
    return {"error": {"message": message, "type": _error_type(status), "param": param,
                      "code": code}}


def job_failure(job: Any) -> tuple[int, str, str]:
    """(status, code, message) of a job that did not succeed."""
    error = job.error if isinstance(job.error, dict) else {}
    code = str(error.get("code") or ("job_canceled" if job.status == JobStatus.CANCELED
                                     else "model_error"))
    detail = error.get("message") or code
    if job.status == JobStatus.CANCELED:
        return 409, code, f"job {job.id} was canceled before it finished ({detail})"
    status = 400 if code == "invalid_input" else 500
    return status, code, f"job {job.id} failed: {detail}"


def failure_body(job: Any) -> tuple[int, dict[str, Any]]:
    status, code, message = job_failure(job)
    return status, error_body(message, status, None, code)
