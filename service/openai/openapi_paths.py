"""The /openai/v1 paths of /openapi.json (components: service/openai/shapes.py)."""

from __future__ import annotations

from typing import Any

_PREFIX = "#/components/schemas/"
BASE = "/openai/v1"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": _PREFIX + name}


def _json(name: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(name)}}}


def _errors(*codes: int) -> dict[str, Any]:
    # Every operation may also meet an outage (503 + Retry-After) or a wrong key (401).
    return {str(code): _json("OpenAIError", "error (OpenAI's shape)")
            for code in sorted({*codes, 401, 503})}


def _path(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


def _query(**types: str) -> list[dict[str, Any]]:
    return [{"name": n, "in": "query", "schema": {"type": t}} for n, t in types.items()]


def _body(name: str) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": _ref(name)}}}


_PREFER = {"name": "Prefer", "in": "header", "schema": {"type": "string", "example": "wait=30"},
           "description": "hold at most N seconds (JANUS_OPENAI_WAIT_SECONDS caps it)"}
_HELD = ("Held until the job ends: 504 naming the job id (header x-janus-job-id) when "
         "the hold runs out; a failed job answers 400 (invalid input) or 500, a canceled "
         "one 409.")


def paths() -> dict[str, Any]:
    file_id, batch_id = _path("file_id"), _path("batch_id")
    return {
        f"{BASE}/models": {"get": {
            "summary": "OpenAI: list models", "tags": ["openai"],
            "responses": {"200": _json("OpenAIModelList", "models"), **_errors()}}},
        f"{BASE}/models/{{model_id}}": {"get": {
            "summary": "OpenAI: a model", "tags": ["openai"], "parameters": [_path("model_id")],
            "responses": {"200": _json("OpenAIModel", "the model"), **_errors(404)}}},
        f"{BASE}/images/generations": {"post": {
            "summary": "OpenAI: generate images (one generate job)", "tags": ["openai"],
            "description": _HELD, "parameters": [_PREFER],
            "requestBody": _body("ImageGenerationRequest"),
            "responses": {"200": _json("ImagesResponse", "the images"),
                          **_errors(400, 404, 409, 413, 429, 500, 504)}}},
        f"{BASE}/chat/completions": {"post": {
            "summary": "OpenAI: a chat completion about one image (one understand job)",
            "tags": ["openai"], "description": _HELD + " With stream: true, server-sent "
            "chat.completion.chunk events as the worker decodes, then data: [DONE].",
            "parameters": [_PREFER], "requestBody": _body("ChatCompletionRequest"),
            "responses": {"200": {"description": "the completion, or its chunks", "content": {
                "application/json": {"schema": _ref("ChatCompletion")},
                "text/event-stream": {"schema": _ref("ChatCompletionChunk")}}},
                **_errors(400, 404, 409, 413, 429, 500, 504)}}},
        f"{BASE}/files": {
            "post": {
                "summary": "OpenAI: upload a batch input file (JSONL)", "tags": ["openai"],
                "requestBody": {"required": True, "content": {"multipart/form-data": {
                    "schema": {"type": "object", "required": ["file", "purpose"],
                               "properties": {"file": {"type": "string", "format": "binary"},
                                              "purpose": {"type": "string",
                                                          "enum": ["batch"]}}}}}},
                "responses": {"200": _json("FileObject", "the file"), **_errors(400, 413)}},
            "get": {
                "summary": "OpenAI: list files", "tags": ["openai"],
                "parameters": _query(purpose="string", limit="integer", order="string",
                                     after="string"),
                "responses": {"200": _json("FileList", "files"), **_errors(400)}}},
        f"{BASE}/files/{{file_id}}": {
            "get": {"summary": "OpenAI: a file", "tags": ["openai"], "parameters": [file_id],
                    "responses": {"200": _json("FileObject", "the file"), **_errors(404)}},
            "delete": {"summary": "OpenAI: delete a file", "tags": ["openai"],
                       "parameters": [file_id],
                       "responses": {"200": _json("FileDeleted", "deleted"),
                                     **_errors(404)}}},
        f"{BASE}/files/{{file_id}}/content": {"get": {
            "summary": "OpenAI: a file's bytes (batch output lines: BatchResultLine)",
            "tags": ["openai"], "parameters": [file_id],
            "responses": {"200": {"description": "the file", "content": {
                "application/octet-stream": {"schema": {"type": "string",
                                                        "format": "binary"}}}},
                **_errors(404)}}},
        f"{BASE}/batches": {
            "post": {"summary": "OpenAI: run a batch input file", "tags": ["openai"],
                     "requestBody": _body("BatchCreate"),
                     "responses": {"200": _json("OpenAIBatch", "the batch (failed with "
                                                "errors.data[].line if a line is invalid)"),
                                   **_errors(400, 404, 429)}},
            "get": {"summary": "OpenAI: list batches", "tags": ["openai"],
                    "parameters": _query(limit="integer", after="string"),
                    "responses": {"200": _json("OpenAIBatchList", "batches"),
                                  **_errors(400)}}},
        f"{BASE}/batches/{{batch_id}}": {"get": {
            "summary": "OpenAI: a batch", "tags": ["openai"], "parameters": [batch_id],
            "responses": {"200": _json("OpenAIBatch", "the batch"), **_errors(404)}}},
        f"{BASE}/batches/{{batch_id}}/cancel": {"post": {
            "summary": "OpenAI: cancel a batch", "tags": ["openai"], "parameters": [batch_id],
            "responses": {"200": _json("OpenAIBatch", "the batch"), **_errors(404)}}},
    }
