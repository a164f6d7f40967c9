"""POST /openai/v1/chat/completions: one understand job; a `chat.completion` once it has
ended, or with `stream: true` server-sent `chat.completion.chunk`s and `data: [DONE]`."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from flask import Response, g, jsonify, stream_with_context

from service.api.context import current_key, runtime
from service.core.tables import Job
from service.lifecycle.jobs import NewJob
from service.lifecycle.status import JobStatus
from service.openai.render import (
    chat_completion,
    completion_id,
    created,
    error_body,
    finish_reason,
    usage,
)
from service.openai.routes import hold
from service.openai.routes.blueprint import bp, json_body
from service.openai.routes.translate import chat_request


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


def _event(body: dict[str, Any]) -> str:
    return f"data: {json.dumps(body)}\n\n"


def _stream(job: Job | NewJob, seconds: int, include_usage: bool) -> Iterator[str]:
    at = created(job)
    yield _event(chunk(job.id, job.model, at, {"role": "assistant", "content": ""}))
    text = hold.TextStream(job.id, seconds)
    for delta in text:
        if delta is None:
            yield ": keep-alive\n\n"  # a comment line; clients skip it
        else:
            yield _event(chunk(job.id, job.model, at, {"content": delta}))
    done = text.job
    if done is None or done.status != JobStatus.SUCCEEDED:
        error = hold.timeout_error(job.id, seconds) if done is None else hold.job_error(done)
        # OpenAI's clients raise on a data line that holds an error object.
        yield _event(error_body(error.message, error.status, None, error.code))
        return
    yield _event(chunk(job.id, job.model, at, {}, finish_reason(done)))
    if include_usage:
        counts = usage(done, runtime().settings.models)
        yield _event(chunk(job.id, job.model, at, {}, usage_=counts, choices=False))
    yield "data: [DONE]\n\n"


@bp.post("/chat/completions")
def create_chat_completion() -> Response:
    rt = runtime()
    g.rate = rt.limiter.check(current_key().id)
    request = chat_request(json_body())
    job = hold.submit(request.job)
    seconds = hold.seconds()
    if request.stream:
        response = Response(stream_with_context(_stream(job, seconds, request.include_usage)),
                            mimetype="text/event-stream")
        response.headers["Cache-Control"] = "no-cache"
        response.headers["X-Accel-Buffering"] = "no"  # nginx: pass events on at once
    else:
        done = hold.wait_succeeded(job.id, seconds)
        response = jsonify(chat_completion(done, rt.settings.models))
    response.headers[hold.JOB_HEADER] = job.id
    return response
