"""Turning a POST /v1/jobs request into a checked submission, or a 4xx.

Everything here runs before anything is stored or enqueued, so a refused
request leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import json
import math
import secrets
from dataclasses import dataclass
from typing import Any

from flask import Request
from pydantic import ValidationError

from service.api.context import ModelInfo
from service.api.errors import ApiError, validation_error
from service.api.parsing.bodies import TooDeep, loads, text_problems
from service.api.schemas.inputs import SEED_MAX, JobCreate, error_details, input_model
from service.core.images import CheckedImage, ImageRejected, check_image, decode_base64_image
from service.core.settings import Settings
from service.lifecycle.jobs import JobSpec
from service.webhooks.ssrf import UnsafeWebhookURL, check_webhook_url

MAX_CANCEL_AFTER = 7 * 24 * 3600


def _spec(body: JobCreate, data: dict[str, Any], image: CheckedImage | None) -> JobSpec:
    return JobSpec(
        model=body.model,
        task=body.task,
        input=dict(data),
        image=image,
        metadata=body.metadata or {},
        webhook=body.webhook,
        webhook_events=body.webhook_events,
    )


@dataclass
class Submission:
    body: JobCreate
    input: dict[str, Any]  # validated, defaults not filled, seed chosen
    image: CheckedImage | None
    request_hash: str
    idempotency_key: str | None
    cancel_after: float | None

    @property
    def spec(self) -> JobSpec:
        return _spec(self.body, self.input, self.image)


def _field_error(field: str, message: str) -> ApiError:
    return validation_error([{"field": field, "message": message}])


def parse_json(raw: str | bytes, field: str, what: str) -> Any:
    """JSON from a client: 400 `invalid_json` if it is not JSON (NaN included), 422 if too deep."""
    try:
        return loads(raw)
    except TooDeep as exc:
        raise _field_error(field, str(exc)) from exc
    except ValueError as exc:  # UnicodeDecodeError is a ValueError too
        raise ApiError(400, "invalid_json", f"{what} is not valid JSON: {exc}") from exc


def _read_body(request: Request) -> tuple[Any, bytes | None]:
    """(job JSON, image bytes from a multipart file part or None)."""
    mimetype = request.mimetype
    if mimetype == "application/json":
        return parse_json(request.get_data(cache=True), "body", "request body"), None
    if mimetype == "multipart/form-data":
        if "job" not in request.form:
            raise _field_error("job", "multipart requests carry the job JSON in a part named 'job'")
        job = parse_json(request.form["job"], "job", "part 'job'")
        upload = request.files.get("image")
        if upload is None:
            raise _field_error("image", "multipart requests carry the image in a file part 'image'")
        return job, upload.read()
    raise ApiError(
        415,
        "unsupported_media_type",
        "send application/json, or multipart/form-data with parts 'job' and 'image'",
    )


def canonical_hash(job: Any, image: bytes | None) -> str:
    digest = hashlib.sha256(json.dumps(job, sort_keys=True, separators=(",", ":")).encode())
    if image is not None:
        digest.update(b"\0image\0" + hashlib.sha256(image).digest())
    return digest.hexdigest()


def check_webhook(url: str, settings: Settings | None = None) -> None:
    """The SSRF guard at submit (service/webhooks/ssrf.py); delivery checks again."""
    if settings is None:  # callers inside a request may leave it to the app's settings
        from service.api.context import runtime

        settings = runtime().settings
    try:
        check_webhook_url(url, settings)
    except UnsafeWebhookURL as exc:
        raise _field_error("webhook", str(exc)) from exc


def _cancel_after(request: Request) -> float | None:
    raw = request.headers.get("Cancel-After")
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (0 < value <= MAX_CANCEL_AFTER):
        raise _field_error("Cancel-After", f"must be seconds between 0 and {MAX_CANCEL_AFTER}")
    return value


def _family_rules(model: ModelInfo, task: str, data: dict[str, Any]) -> None:
    if task != "generate":
        return
    if model.family == "janusflow" and data.get("temperature") is not None:
        raise _field_error("input.temperature", "temperature applies to Janus/Janus-Pro models")
    if model.family != "janusflow" and data.get("steps") is not None:
        raise _field_error("input.steps", "steps applies to JanusFlow models")


@dataclass
class CheckedJob:
    body: JobCreate
    input: dict[str, Any]  # validated; seed chosen when absent
    image: CheckedImage | None

    @property
    def spec(self) -> JobSpec:
        return _spec(self.body, self.input, self.image)


def check_job(
    job: Any,
    models: dict[str, ModelInfo],
    settings: Settings,
    image_bytes: bytes | None = None,
    multipart: bool = False,
) -> CheckedJob:
    """Validate one job body (an API request or one batch line); raise ApiError if bad."""
    if not isinstance(job, dict):
        raise _field_error("body", "the job must be a JSON object")
    problems = text_problems(job)  # NUL, lone surrogates, NaN, depth: refused, never stored
    if problems:
        raise validation_error(problems)
    try:
        body = JobCreate.model_validate(job)
    except ValidationError as exc:
        raise validation_error(error_details(exc)) from exc
    model = models.get(body.model)
    if model is None:
        raise ApiError(
            422,
            "unknown_model",
            f"unknown model {body.model!r}",
            [{"field": "model", "message": f"unknown model; known: {', '.join(sorted(models))}"}],
        )
    if body.task not in model.tasks:
        raise _field_error("task", f"model {body.model} does not support task {body.task!r}")
    if multipart and body.task != "understand":
        raise _field_error("task", "multipart uploads are for understand jobs")
    if multipart and "image" in body.input:
        raise _field_error("input.image", "send the image as the file part, not inside 'job'")
    try:
        parsed = input_model(body.task, multipart).model_validate(body.input)
    except ValidationError as exc:
        raise validation_error(error_details(exc, "input.")) from exc
    data = parsed.model_dump(exclude_none=True)
    data.pop("image", None)
    if not data.get("preview", True):
        data.pop("preview")  # the default is not stored: inputs read as they did before
    _family_rules(model, body.task, data)
    if body.webhook is not None:
        check_webhook(body.webhook, settings)

    image = None
    if body.task == "understand":
        try:
            if image_bytes is None:
                image_bytes = decode_base64_image(body.input["image"], settings.max_image_bytes)
            image = check_image(
                image_bytes,
                max_bytes=settings.max_image_bytes,
                max_pixels=settings.max_image_pixels,
            )
        except ImageRejected as exc:
            raise ApiError(
                422, exc.code, str(exc), [{"field": "input.image", "message": str(exc)}]
            ) from exc
    if data.get("seed") is None:
        data["seed"] = secrets.randbelow(2**32)  # small enough to read, well inside SEED_MAX
    assert data["seed"] <= SEED_MAX
    return CheckedJob(body, data, image)


def parse_submission(
    request: Request, models: dict[str, ModelInfo], settings: Settings
) -> Submission:
    job, image_bytes = _read_body(request)
    checked = check_job(job, models, settings, image_bytes, multipart=image_bytes is not None)
    key = request.headers.get("Idempotency-Key")
    if key is not None and not (0 < len(key) <= 255):
        raise _field_error("Idempotency-Key", "must be 1 to 255 characters")
    if key is not None and text_problems(key):
        raise _field_error("Idempotency-Key", "must not contain NUL or invalid characters")
    request_hash = canonical_hash(job, image_bytes)
    return Submission(checked.body, checked.input, checked.image, request_hash, key,
                      _cancel_after(request))
