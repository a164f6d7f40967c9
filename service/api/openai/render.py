"""What only the routes answer with: streamed `chat.completion.chunk`s, and the
OpenAIError a failed, canceled or still-running job raises.

The bodies of finished jobs (ImagesResponse, chat.completion, error bodies) are in
service/openai_wire/render.py: the dispatcher writes them into batch files too.
`job` is anything with the job row's attributes (an ORM Job or a selected row).
"""

from __future__ import annotations

from typing import Any

from service.api.openai.errors import OpenAIError
from service.openai_wire.render import completion_id, job_failure

JOB_HEADER = "x-janus-job-id"  # on every answer that created a job: GET /v1/jobs/{id}


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


def job_error(job: Any) -> OpenAIError:
    status, code, message = job_failure(job)
    return OpenAIError(status, message, code=code, headers={JOB_HEADER: job.id}, retry=False)


def timeout_error(job_id: str, seconds: int) -> OpenAIError:
    """The hold ran out: the job keeps running and its id says where to find it."""
    return OpenAIError(
        504,
        f"job {job_id} did not finish within {seconds} seconds; it keeps running: read it "
        f"with GET /v1/jobs/{job_id} (or cancel it with POST /v1/jobs/{job_id}/cancel)",
        code="job_timeout", headers={JOB_HEADER: job_id}, retry=False,
    )
