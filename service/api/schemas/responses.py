"""Response models of the API's own objects: errors, lists, models, webhook deliveries.

The job, batch and result-line objects are the lifecycle's public views
(`service.lifecycle.views`), since the webhook outbox snapshots them too. Routes
render these models with `public()`, and /openapi.json is generated from them.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from service.lifecycle.views import BatchObject, JobObject, Timestamp


class ErrorBody(BaseModel):
    code: str = Field(description="snake_case, stable; e.g. validation_error, unknown_model")
    message: str = Field(description="a human sentence")
    details: Any = Field(
        None, description="validation errors: [{field, message}] (batch uploads add line)"
    )


class ErrorResponse(BaseModel):
    """Every 4xx and 5xx body."""

    model_config = ConfigDict(title="Error")
    error: ErrorBody


class JobList(BaseModel):
    object: Literal["list"]
    data: list[JobObject]
    has_more: bool
    next: str | None = Field(description="pass as `after` for the next page")


class BatchList(BaseModel):
    object: Literal["list"]
    data: list[BatchObject]
    has_more: bool
    next: str | None = Field(description="pass as `after` for the next page")


class ModelObject(BaseModel):
    id: str
    object: Literal["model"]
    family: str
    tasks: list[Literal["generate", "understand"]]
    defaults: dict[str, Any]
    workers: int = Field(description="workers with a fresh heartbeat")
    queued: int
    running: int


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[ModelObject]


class WebhookDelivery(BaseModel):
    id: str
    object: Literal["webhook_delivery"]
    event_id: str = Field(description="the webhook-id header")
    type: str
    url: str
    attempt: int
    attempted_at: Timestamp
    status_code: int | None
    error: str | None
    duration_ms: float | None
    next_attempt_at: Timestamp | None
    event_status: Literal["pending", "delivering", "succeeded", "failed"]


class WebhookDeliveryList(BaseModel):
    object: Literal["list"]
    data: list[WebhookDelivery]
