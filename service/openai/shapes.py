"""The OpenAI face's request and response shapes, for /openapi.json.

The routes check requests in service/openai/routes/translate.py (with OpenAI's error
messages) and build responses as plain dicts; tests/test_openai.py validates live
answers against the response models here (extra fields forbidden), so the document
and the wire cannot drift apart silently.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Shape(BaseModel):
    model_config = ConfigDict(extra="forbid")


class OpenAIErrorBody(_Shape):
    message: str
    type: str = Field(description="invalid_request_error | requests | server_error")
    param: str | None = Field(description="the request parameter at fault, OpenAI's name")
    code: str | None


class OpenAIError(_Shape):
    """Every 4xx and 5xx under /openai/v1 (OpenAI's error shape)."""

    error: OpenAIErrorBody


class OpenAIModel(_Shape):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str


class OpenAIModelList(_Shape):
    object: Literal["list"]
    data: list[OpenAIModel]


class ImageGenerationRequest(_Shape):
    model: str
    prompt: str = Field(min_length=1, max_length=4000)
    n: int | None = Field(None, ge=1, le=16, description="-> num_images")
    size: str | None = Field(None, description="`auto` or the model's own size, e.g. 384x384")
    response_format: Literal["url", "b64_json"] | None = None
    user: str | None = Field(None, description="kept in the job's metadata")
    seed: int | None = Field(None, ge=0, description="Janus knob (`extra_body`)")
    guidance: float | None = Field(None, description="Janus knob (`extra_body`)")
    temperature: float | None = Field(None, description="Janus/Janus-Pro knob (`extra_body`)")
    steps: int | None = Field(None, description="JanusFlow knob (`extra_body`)")


class ImageData(_Shape):
    url: str | None = Field(None, description="a signed URL that expires")
    b64_json: str | None = None
    revised_prompt: None = None


class ImagesResponse(_Shape):
    created: int
    data: list[ImageData]


class TextPart(_Shape):
    type: Literal["text"]
    text: str


class ImageUrl(_Shape):
    url: str = Field(description="a data: URL (base64); http(s) URLs are refused")
    detail: str | None = None


class ImageUrlPart(_Shape):
    type: Literal["image_url"]
    image_url: ImageUrl


class ChatMessage(_Shape):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart | ImageUrlPart] | None
    name: str | None = None


class StreamOptions(_Shape):
    include_usage: bool = False


class ChatCompletionRequest(_Shape):
    model: str
    messages: list[ChatMessage] = Field(
        min_length=1, description="one image in all; the last message is the user's")
    max_tokens: int | None = Field(None, ge=1, le=2048)
    max_completion_tokens: int | None = Field(None, ge=1, le=2048)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    seed: int | None = Field(None, ge=0)
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    user: str | None = None
    metadata: dict[str, str] | None = None


class AssistantMessage(_Shape):
    role: Literal["assistant"]
    content: str
    refusal: None = None


class ChatChoice(_Shape):
    index: int
    message: AssistantMessage
    logprobs: None = None
    finish_reason: Literal["stop", "length"]


class Usage(_Shape):
    prompt_tokens: int = Field(description="estimated unless the worker reports it")
    completion_tokens: int
    total_tokens: int


class ChatCompletion(_Shape):
    id: str = Field(description="chatcmpl-<job id>")
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    system_fingerprint: None = None


class ChunkDelta(_Shape):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(_Shape):
    index: int
    delta: ChunkDelta
    logprobs: None = None
    finish_reason: Literal["stop", "length"] | None


class ChatCompletionChunk(_Shape):
    """One `data:` line of a streamed answer; the stream ends with `data: [DONE]`."""

    id: str
    object: Literal["chat.completion.chunk"]
    created: int
    model: str
    system_fingerprint: None = None
    choices: list[ChunkChoice]
    usage: Usage | None = None


class FileObject(_Shape):
    id: str
    object: Literal["file"]
    bytes: int
    created_at: int
    filename: str
    purpose: Literal["batch", "batch_output"]
    status: Literal["processed"]
    status_details: None = None
    expires_at: int | None = None


class FileList(_Shape):
    object: Literal["list"]
    data: list[FileObject]
    first_id: str | None
    last_id: str | None
    has_more: bool


class FileDeleted(_Shape):
    id: str
    object: Literal["file"]
    deleted: bool


class BatchCreate(_Shape):
    input_file_id: str
    endpoint: Literal["/v1/images/generations", "/v1/chat/completions"]
    completion_window: Literal["24h"]
    metadata: dict[str, str] | None = None
    webhook: str | None = Field(None, description="ours (extra_body): batch.completed is "
                                "delivered there, as for /v1/batches")


class BatchLineError(_Shape):
    code: str
    message: str
    param: str | None
    line: int | None


class BatchErrors(_Shape):
    object: Literal["list"]
    data: list[BatchLineError]


class RequestCounts(_Shape):
    total: int
    completed: int
    failed: int = Field(description="failed, canceled and expired requests")


class OpenAIBatch(_Shape):
    id: str
    object: Literal["batch"]
    endpoint: str
    errors: BatchErrors | None
    input_file_id: str
    completion_window: str
    status: Literal["validating", "failed", "in_progress", "finalizing", "completed",
                    "expired", "cancelling", "cancelled"]
    output_file_id: str | None
    error_file_id: str | None
    created_at: int
    in_progress_at: int | None
    expires_at: int
    finalizing_at: int | None
    completed_at: int | None
    failed_at: int | None
    expired_at: int | None
    cancelling_at: int | None
    cancelled_at: int | None
    request_counts: RequestCounts
    metadata: dict[str, str] | None


class OpenAIBatchList(_Shape):
    object: Literal["list"]
    data: list[OpenAIBatch]
    first_id: str | None
    last_id: str | None
    has_more: bool


class BatchResultResponse(_Shape):
    status_code: int
    request_id: str = Field(description="the job id: GET /v1/jobs/{request_id}")
    body: dict[str, Any]


class BatchResultLine(_Shape):
    """One line of a batch's output or error file."""

    id: str
    custom_id: str
    response: BatchResultResponse | None
    error: dict[str, str] | None


REQUESTS: tuple[type[BaseModel], ...] = (ImageGenerationRequest, ChatCompletionRequest,
                                         BatchCreate)
RESPONSES: tuple[type[BaseModel], ...] = (
    OpenAIError, OpenAIModel, OpenAIModelList, ImagesResponse, ChatCompletion,
    ChatCompletionChunk, FileObject, FileList, FileDeleted, OpenAIBatch, OpenAIBatchList,
    BatchResultLine,
)
