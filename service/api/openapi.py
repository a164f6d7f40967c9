"""/openapi.json, generated from the pydantic models that validate requests."""

from __future__ import annotations

from functools import cache
from typing import Any

from pydantic.json_schema import models_json_schema

from service.schemas import GenerateInput, JobCreate, UnderstandInput

_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {
                "code": {"type": "string"},
                "message": {"type": "string"},
                "details": {},
            },
        }
    },
}
_JOB = {
    "type": "object",
    "required": [
        "id",
        "object",
        "model",
        "task",
        "status",
        "input",
        "output",
        "error",
        "batch_id",
        "metadata",
        "attempts",
        "created_at",
        "started_at",
        "completed_at",
        "metrics",
    ],
    "properties": {
        "id": {"type": "string"},
        "object": {"const": "job"},
        "model": {"type": "string"},
        "task": {"enum": ["generate", "understand"]},
        "status": {"enum": ["queued", "running", "succeeded", "failed", "canceled"]},
        "input": {"type": "object"},
        "output": {"type": ["object", "null"]},
        "error": {"type": ["object", "null"]},
        "batch_id": {"type": ["string", "null"]},
        "metadata": {"type": "object"},
        "attempts": {"type": "integer"},
        "queue_position": {"type": ["integer", "null"]},
        "created_at": {"type": "string", "format": "date-time"},
        "started_at": {"type": ["string", "null"], "format": "date-time"},
        "completed_at": {"type": ["string", "null"], "format": "date-time"},
        "metrics": {"type": "object"},
    },
}
_COUNTS = {s: {"type": "integer"} for s in
           ("total", "queued", "running", "succeeded", "failed", "canceled")}
_BATCH = {
    "type": "object",
    "required": ["id", "object", "status", "counts", "created_at", "completed_at", "webhook",
                 "metadata"],
    "properties": {
        "id": {"type": "string"}, "object": {"const": "batch"},
        "status": {"enum": ["queued", "running", "completed", "canceling", "canceled"]},
        "counts": {"type": "object", "properties": _COUNTS},
        "created_at": {"type": "string", "format": "date-time"},
        "completed_at": {"type": ["string", "null"], "format": "date-time"},
        "webhook": {"type": ["string", "null"]}, "metadata": {"type": "object"},
    },
}
_DELIVERY = {
    "type": "object",
    "required": ["id", "event_id", "type", "attempt", "attempted_at", "status_code", "error",
                 "duration_ms", "next_attempt_at", "event_status"],
    "properties": {
        "id": {"type": "string"},
        "event_id": {"type": "string", "description": "the webhook-id header"},
        "type": {"type": "string"},
        "attempt": {"type": "integer"},
        "attempted_at": {"type": "string", "format": "date-time"},
        "status_code": {"type": ["integer", "null"]},
        "error": {"type": ["string", "null"]},
        "duration_ms": {"type": ["number", "null"]},
        "next_attempt_at": {"type": ["string", "null"], "format": "date-time"},
        "event_status": {"enum": ["pending", "delivering", "succeeded", "failed"]},
    },
}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict[str, Any]:
    return {str(c): {"description": "error", **_json(_ref("Error"))} for c in codes}


@cache
def openapi_document() -> dict[str, Any]:
    _, defs = models_json_schema(
        [(m, "validation") for m in (JobCreate, GenerateInput, UnderstandInput)],
        ref_template="#/components/schemas/{model}",
    )
    schemas = {**defs["$defs"], "Error": _ERROR, "Job": _JOB, "Batch": _BATCH}
    schemas["JobCreate"]["properties"]["input"] = {
        "oneOf": [_ref("GenerateInput"), _ref("UnderstandInput")]
    }
    job_id = {"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}}
    batch_id = {"name": "batch_id", "in": "path", "required": True,
                "schema": {"type": "string"}}
    ok_job = {"200": {"description": "the job", **_json(_ref("Job"))}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "Janus job service", "version": "1"},
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
        "paths": {
            "/v1/jobs": {
                "post": {
                    "summary": "Submit a job",
                    "parameters": [
                        {"name": "Idempotency-Key", "in": "header", "schema": {"type": "string"}},
                        {"name": "Cancel-After", "in": "header", "schema": {"type": "number"}},
                    ],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {"schema": _ref("JobCreate")},
                            "multipart/form-data": {
                                "schema": {
                                    "type": "object",
                                    "required": ["job", "image"],
                                    "properties": {
                                        "job": {"type": "string"},
                                        "image": {"type": "string", "format": "binary"},
                                    },
                                }
                            },
                        },
                    },
                    "responses": {
                        "202": {"description": "accepted", **_json(_ref("Job"))},
                        "200": {"description": "idempotent replay", **_json(_ref("Job"))},
                        **_errors(400, 401, 409, 413, 415, 422, 429),
                    },
                },
                "get": {
                    "summary": "List jobs, newest first",
                    "parameters": [
                        {"name": n, "in": "query", "schema": {"type": t}}
                        for n, t in (
                            ("status", "string"),
                            ("model", "string"),
                            ("batch_id", "string"),
                            ("limit", "integer"),
                            ("after", "string"),
                        )
                    ],
                    "responses": {"200": {"description": "a page of jobs"}, **_errors(401, 422)},
                },
            },
            "/v1/jobs/{job_id}": {
                "get": {
                    "summary": "Read a job",
                    "parameters": [
                        job_id,
                        {
                            "name": "Prefer",
                            "in": "header",
                            "schema": {"type": "string", "example": "wait=30"},
                        },
                    ],
                    "responses": {**ok_job, **_errors(401, 404)},
                }
            },
            "/v1/jobs/{job_id}/cancel": {
                "post": {
                    "summary": "Cancel a job",
                    "parameters": [job_id],
                    "responses": {**ok_job, **_errors(401, 404)},
                }
            },
            "/v1/jobs/{job_id}/webhook-deliveries": {
                "get": {
                    "summary": "Every webhook delivery attempt for the job, oldest first",
                    "parameters": [job_id],
                    "responses": {
                        "200": {
                            "description": "attempts",
                            **_json(
                                {
                                    "type": "object",
                                    "required": ["object", "data"],
                                    "properties": {
                                        "object": {"const": "list"},
                                        "data": {"type": "array", "items": _DELIVERY},
                                    },
                                }
                            ),
                        },
                        **_errors(401, 404),
                    },
                }
            },
            "/v1/batches": {
                "post": {
                    "summary": "Upload a batch of jobs (JSONL or CSV)",
                    "requestBody": {"required": True, "content": {"multipart/form-data": {
                        "schema": {"type": "object", "required": ["file"], "properties": {
                            "file": {"type": "string", "format": "binary"},
                            "defaults": {"type": "string", "description": "JSON object"},
                            "webhook": {"type": "string"},
                            "metadata": {"type": "string", "description": "JSON object"},
                        }}}}},
                    "responses": {"202": {"description": "accepted", **_json(_ref("Batch"))},
                                  **_errors(401, 413, 415, 422, 429)},
                },
                "get": {"summary": "List batches, newest first",
                        "parameters": [{"name": n, "in": "query", "schema": {"type": t}}
                                       for n, t in (("limit", "integer"), ("after", "string"))],
                        "responses": {"200": {"description": "a page of batches"}}},
            },
            "/v1/batches/{batch_id}": {"get": {
                "summary": "Read a batch", "parameters": [batch_id],
                "responses": {"200": {"description": "the batch", **_json(_ref("Batch"))},
                              **_errors(401, 404)}}},
            "/v1/batches/{batch_id}/cancel": {"post": {
                "summary": "Cancel every job of the batch not yet terminal",
                "parameters": [batch_id],
                "responses": {"200": {"description": "the batch", **_json(_ref("Batch"))},
                              **_errors(401, 404)}}},
            "/v1/batches/{batch_id}/results": {"get": {
                "summary": "Results in upload order (NDJSON; partial while running)",
                "parameters": [batch_id],
                "responses": {"200": {"description": "one JSON object per line", "content": {
                    "application/x-ndjson": {"schema": {"type": "string"}}}},
                    **_errors(401, 404)}}},
            "/v1/models": {
                "get": {"summary": "Served models", "responses": {"200": {"description": "models"}}}
            },
            "/healthz": {"get": {"security": [], "responses": {"200": {"description": "alive"}}}},
            "/readyz": {
                "get": {
                    "security": [],
                    "responses": {"200": {"description": "ready"}, **_errors(503)},
                }
            },
            "/metrics": {
                "get": {"security": [], "responses": {"200": {"description": "Prometheus text"}}}
            },
            "/openapi.json": {
                "get": {"security": [], "responses": {"200": {"description": "this document"}}}
            },
        },
    }
