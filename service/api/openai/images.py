"""POST /openai/v1/images/generations: one generate job, answered once it has ended."""

from __future__ import annotations

from flask import Response, g, jsonify

from service.api.context import current_key, runtime
from service.api.openai.blueprint import bp, hold_seconds, json_body
from service.api.openai.jobs import submit, wait_terminal
from service.api.openai.render import JOB_HEADER, job_error, timeout_error
from service.api.openai.translate import image_request
from service.lifecycle.status import JobStatus
from service.openai_wire.render import images_body


@bp.post("/images/generations")
def generate_images() -> Response:
    rt = runtime()
    g.rate = rt.limiter.check(current_key().id)
    request = image_request(json_body())
    job = submit(request.job)
    seconds = hold_seconds()
    done = wait_terminal(job.id, seconds)
    if done is None:
        raise timeout_error(job.id, seconds)
    if done.status != JobStatus.SUCCEEDED:
        raise job_error(done)
    body = images_body(done, request.response_format, rt.storage, rt.settings.url_expiry_seconds)
    response = jsonify(body)
    response.headers[JOB_HEADER] = job.id
    return response
