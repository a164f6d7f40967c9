"""/openapi.json, generated from the pydantic models that validate requests and render responses.

Components come from `model_json_schema` of those models (requests in validation
mode, responses in serialization mode), so the document cannot drift from what
the routes accept and return; only the paths table is written here.
"""

from __future__ import annotations

import json
from functools import cache
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from service.api.schemas.inputs import GenerateInput, JobCreate, UnderstandInput
from service.api.schemas.responses import (
    BatchList,
    ErrorResponse,
    JobList,
    ModelList,
    WebhookDeliveryList,
)
from service.lifecycle.views import BatchObject, JobObject, ResultLine
from service.openai import openapi_paths
from service.openai import shapes as openai_shapes

REQUESTS: tuple[type[BaseModel], ...] = (
    JobCreate, GenerateInput, UnderstandInput, *openai_shapes.REQUESTS)
RESPONSES: tuple[type[BaseModel], ...] = (
    JobObject, JobList, BatchObject, BatchList, ResultLine, ModelList, WebhookDeliveryList,
    ErrorResponse, *openai_shapes.RESPONSES,
)
# Component names clients know (class names say which layer a model lives in).
RENAMED = {"JobObject": "Job", "BatchObject": "Batch", "ErrorResponse": "Error"}
_PREFIX = "#/components/schemas/"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": _PREFIX + name}


def _json(name: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(name)}}}


def _errors(*codes: int) -> dict[str, Any]:
    return {str(code): _json("Error", "error") for code in codes}


def _params(where: str, **types: str) -> list[dict[str, Any]]:
    return [{"name": n, "in": where, "schema": {"type": t}} for n, t in types.items()]


def _path(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


def _multipart(required: list[str], **properties: dict[str, Any]) -> dict[str, Any]:
    schema = {"type": "object", "required": required, "properties": properties}
    return {"multipart/form-data": {"schema": schema}}


_JOB_EVENTS = (
    "Every event has an `id:`, an `event:` name and a JSON `data:` line. `queued` "
    "{queue_position} (while queued), `started` {}, `progress` {step, steps, fraction}, "
    "`token` {text} (the new text of an understanding answer; all token texts joined equal "
    "`output.text`), `preview` (generation, when asked for), and last `completed`, whose data "
    "is the job object exactly as GET /v1/jobs/{job_id} returns it; then the stream ends. "
    "A job already ended answers its `completed` at once. Comment lines are heartbeats. "
    "`Last-Event-ID` resumes right after that event, with no loss and no repeats."
)
_LAST_EVENT_ID = {"name": "Last-Event-ID", "in": "header", "schema": {"type": "string"},
                  "description": "resume after this event id (400 if not one this API sent)"}


def _event_stream(events: str) -> dict[str, Any]:
    return {"description": f"text/event-stream: {events}",
            "content": {"text/event-stream": {"schema": {"type": "string"}}}}


def components() -> dict[str, Any]:
    _, defs = models_json_schema(
        [(m, "validation") for m in REQUESTS] + [(m, "serialization") for m in RESPONSES],
        ref_template=_PREFIX + "{model}",
    )
    text = json.dumps(defs["$defs"])
    for old, new in RENAMED.items():
        text = text.replace(f'"{_PREFIX}{old}"', f'"{_PREFIX}{new}"')
    schemas = {RENAMED.get(k, k): v for k, v in json.loads(text).items()}
    # The input's shape depends on the task: say which ones it can be.
    schemas["JobCreate"]["properties"]["input"] = {
        "oneOf": [_ref("GenerateInput"), _ref("UnderstandInput")]
    }
    return schemas


def _paths() -> dict[str, Any]:
    job_id, batch_id = _path("job_id"), _path("batch_id")
    binary = {"type": "string", "format": "binary"}
    json_part = {"type": "string", "description": "JSON object"}
    open_op: dict[str, Any] = {"security": []}  # no API key needed
    return {
        "/v1/jobs": {
            "post": {
                "summary": "Submit a job",
                "parameters": _params("header", **{"Idempotency-Key": "string",
                                                   "Cancel-After": "number"}),
                "requestBody": {"required": True, "content": {
                    "application/json": {"schema": _ref("JobCreate")},
                    **_multipart(["job", "image"], job={"type": "string"}, image=binary)}},
                "responses": {"202": _json("Job", "accepted"),
                              "200": _json("Job", "idempotent replay"),
                              **_errors(400, 401, 409, 413, 415, 422, 429, 503)},
            },
            "get": {
                "summary": "List jobs, newest first",
                "parameters": _params("query", status="string", model="string",
                                      batch_id="string", limit="integer", after="string"),
                "responses": {"200": _json("JobList", "a page of jobs"), **_errors(401, 422)},
            },
        },
        "/v1/jobs/{job_id}": {
            "get": {
                "summary": "Read a job",
                "parameters": [job_id, {"name": "Prefer", "in": "header",
                                        "schema": {"type": "string", "example": "wait=30"}}],
                "responses": {"200": _json("Job", "the job"), **_errors(401, 404)}},
            "delete": {
                "summary": "Delete a finished job's stored inputs and outputs now",
                "parameters": [job_id],
                "responses": {"200": _json("Job", "the job, with data_removed: true"),
                              **_errors(401, 404, 409, 503)}},
        },
        "/v1/jobs/{job_id}/cancel": {"post": {
            "summary": "Cancel a job", "parameters": [job_id],
            "responses": {"200": _json("Job", "the job"), **_errors(401, 404)}}},
        "/v1/jobs/{job_id}/events": {"get": {
            "summary": "The job's live events (server-sent events) until it ends",
            "description": _JOB_EVENTS,
            "parameters": [job_id, _LAST_EVENT_ID],
            "responses": {"200": _event_stream("`queued` `started` `progress` `token` "
                                               "`preview`, last `completed`"),
                          "204": {"description": "Last-Event-ID was `end`: nothing follows"},
                          **_errors(400, 401, 404)}}},
        "/v1/batches/{batch_id}/events": {"get": {
            "summary": "The batch's counts as they change (server-sent events) until it ends",
            "description": "`counts` (the batch's `counts` object; at most one a second, on "
                           "change), then `completed` (the batch object) and the stream ends.",
            "parameters": [batch_id, _LAST_EVENT_ID],
            "responses": {"200": _event_stream("`counts`, last `completed`"),
                          **_errors(400, 401, 404)}}},
        "/v1/jobs/{job_id}/webhook-deliveries": {"get": {
            "summary": "Every webhook delivery attempt for the job, oldest first",
            "parameters": [job_id],
            "responses": {"200": _json("WebhookDeliveryList", "attempts"),
                          **_errors(401, 404)}}},
        "/v1/batches": {
            "post": {
                "summary": "Upload a batch of jobs (JSONL or CSV)",
                "requestBody": {"required": True, "content": _multipart(
                    ["file"], file=binary, defaults=json_part, webhook={"type": "string"},
                    metadata=json_part)},
                "responses": {"202": _json("Batch", "accepted"),
                              **_errors(401, 413, 415, 422, 429, 503)},
            },
            "get": {
                "summary": "List batches, newest first",
                "parameters": _params("query", limit="integer", after="string"),
                "responses": {"200": _json("BatchList", "a page of batches"),
                              **_errors(401, 422)},
            },
        },
        "/v1/batches/{batch_id}": {"get": {
            "summary": "Read a batch", "parameters": [batch_id],
            "responses": {"200": _json("Batch", "the batch"), **_errors(401, 404)}}},
        "/v1/batches/{batch_id}/cancel": {"post": {
            "summary": "Cancel every job of the batch not yet terminal",
            "parameters": [batch_id],
            "responses": {"200": _json("Batch", "the batch"), **_errors(401, 404)}}},
        "/v1/batches/{batch_id}/results": {"get": {
            "summary": "Results in upload order (NDJSON, one ResultLine per line; partial "
                       "while running)",
            "parameters": [batch_id],
            "responses": {"200": {"description": "one JSON object per line", "content": {
                "application/x-ndjson": {"schema": _ref("ResultLine")}}},
                **_errors(401, 404)}}},
        "/v1/models": {"get": {"summary": "Served models",
                               "responses": {"200": _json("ModelList", "models"),
                                             **_errors(401)}}},
        "/healthz": {"get": {**open_op, "responses": {"200": {"description": "alive"}}}},
        "/readyz": {"get": {**open_op, "responses": {"200": {"description": "ready"},
                                                     **_errors(503)}}},
        "/metrics": {"get": {**open_op,
                             "responses": {"200": {"description": "Prometheus text"}}}},
        "/openapi.json": {"get": {**open_op,
                                  "responses": {"200": {"description": "this document"}}}},
        "/console": {"get": {**open_op, "summary": "The web console (its files: /console/*)",
                             "responses": {"200": {"description": "HTML", "content": {
                                 "text/html": {"schema": {"type": "string"}}}}}}},
    }


def _with_outages(paths: dict[str, Any]) -> dict[str, Any]:
    """Every /v1 operation may answer 503 (`database_unavailable` etc., with Retry-After)."""
    for path, operations in paths.items():
        if path.startswith("/v1/"):
            for operation in operations.values():
                operation["responses"].update(_errors(503))
    return paths


@cache
def openapi_document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {"title": "Janus job service", "version": "1"},
        "components": {
            "schemas": components(),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
        "paths": {**_with_outages(_paths()), **openapi_paths.paths()},
    }
