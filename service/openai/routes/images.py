"""POST /openai/v1/images/generations: one generate job, answered once it has ended."""

from __future__ import annotations

from flask import Response, g, jsonify

from service.api.context import current_key, runtime
from service.openai.render import images_body
from service.openai.routes.blueprint import bp, json_body
from service.openai.routes.hold import JOB_HEADER, hold_seconds, submit, wait_succeeded
from service.openai.routes.translate import image_request


@bp.post("/images/generations")
def generate_images() -> Response:
    rt = runtime()
    g.rate = rt.limiter.check(current_key().id)
    request = image_request(json_body())
    job = submit(request.job)
    done = wait_succeeded(job.id, hold_seconds())
    body = images_body(done, request.response_format, rt.storage, rt.settings.url_expiry_seconds)
    response = jsonify(body)
    response.headers[JOB_HEADER] = job.id
    return response
