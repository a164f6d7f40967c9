"""Finished jobs as OpenAI's response objects: ImagesResponse, chat.completion, its chunks,
and the OpenAIError a failed or canceled job answers with.

`job` is anything with the job row's attributes (an ORM Job or a selected row).
"""

from __future__ import annotations

import base64
import math
import time
from typing import Any

from service.api.openai.blueprint import image_size
from service.api.openai.errors import OpenAIError, error_body
from service.core.storage import Storage
from service.lifecycle.status import JobStatus

CHARS_PER_TOKEN = 4  # the estimate for rows without the worker's counts: no tokenizer here
JOB_HEADER = "x-janus-job-id"  # on every answer that created a job: GET /v1/jobs/{id}


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


def usage(job: Any, models: dict[str, str] | None = None) -> dict[str, int]:
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


def chat_completion(job: Any, models: dict[str, str] | None = None) -> dict[str, Any]:
    message = {"role": "assistant", "content": (job.output or {}).get("text", ""),
               "refusal": None}
    return {
        "id": completion_id(job.id), "object": "chat.completion", "created": created(job),
        "model": job.model,
        "choices": [{"index": 0, "message": message, "logprobs": None,
                     "finish_reason": finish_reason(job)}],
        "usage": usage(job, models), "system_fingerprint": None,
    }


def chunk(job_id: str, model: str, created_at: int, delta: dict[str, Any],
          finish: str | None = None, usage_: dict[str, int] | None = None,
          choices: bool = True) -> dict[str, Any]:
    """One `chat.completion.chunk`; the usage chunk (stream_options) has no choices."""
    body: dict[str, Any] = {
        "id": completion_id(job_id), "object": "chat.completion.chunk", "created": created_at,
        "model": model, "system_fingerprint": None,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]
        if choices else [],
    }
    if usage_ is not None:
        body["usage"] = usage_
    return body


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


def job_error(job: Any) -> OpenAIError:
    status, code, message = job_failure(job)
    return OpenAIError(status, message, code=code, headers={JOB_HEADER: job.id}, retry=False)


def failure_body(job: Any) -> tuple[int, dict[str, Any]]:
    status, code, message = job_failure(job)
    return status, error_body(message, status, None, code)


def timeout_error(job_id: str, seconds: int) -> OpenAIError:
    """The hold ran out: the job keeps running and its id says where to find it."""
    return OpenAIError(
        504,
        f"job {job_id} did not finish within {seconds} seconds; it keeps running: read it "
        f"with GET /v1/jobs/{job_id} (or cancel it with POST /v1/jobs/{job_id}/cancel)",
        code="job_timeout", headers={JOB_HEADER: job_id}, retry=False,
    )
