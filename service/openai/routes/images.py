"""POST /openai/v1/images/generations: one generate job, answered once it has ended."""

from __future__ import annotations

from flask import Response, g, jsonify

from service.api.context import current_key, runtime
from service.openai.render import images_body
from service.openai.routes import hold
from service.openai.routes.blueprint import bp, json_body
from service.openai.routes.translate import image_request


@bp.post("/images/generations")
def generate_images() -> Response:
    rt = runtime()
    g.rate = rt.limiter.check(current_key().id)
    request = image_request(json_body())
    job = hold.submit(request.job)
    done = hold.wait_succeeded(job.id, hold.seconds())
    body = images_body(done, request.response_format, rt.storage, rt.settings.url_expiry_seconds)
    response = jsonify(body)
    response.headers[hold.JOB_HEADER] = job.id
    return response
