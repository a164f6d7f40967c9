"""The public job, batch and result-line objects: typed response models, built from rows.

The API renders them, the outbox snapshots them, and /openapi.json is generated
from them, so the wire shape is written down once. Fields that only appear in
some states (`queue_position`, `custom_id`, `metrics.progress`) are left unset
otherwise, and `public()` drops unset fields. Storage keys become fresh
presigned URLs, except in outbox snapshots (`storage=None`), where they stay
keys until delivery.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer, WithJsonSchema

from service.core.storage import Storage
from service.core.tables import Batch, Job
from service.lifecycle.status import BatchStatus, JobStatus

if TYPE_CHECKING:
    from service.lifecycle.jobs import NewJob  # jobs imports nothing of this module


def iso(value: datetime | None) -> str | None:
    """RFC 3339 UTC with milliseconds and a `Z`, the format of every time on the wire."""
    if value is None:
        return None
    return value.isoformat(timespec="milliseconds").replace("+00:00", "Z")


Timestamp = Annotated[
    datetime,
    PlainSerializer(iso, return_type=str),
    WithJsonSchema({"type": "string", "format": "date-time"}),
]


def public(model: BaseModel) -> dict[str, Any]:
    """The JSON object clients see: fields a state leaves unset are absent, not null."""
    return model.model_dump(mode="json", exclude_unset=True)


class ErrorInfo(BaseModel):
    """Why a job failed (or `deadline_exceeded` when a deadline canceled it)."""

    model_config = ConfigDict(extra="allow")
    code: str
    message: str


class JobMetrics(BaseModel):
    queue_seconds: float | None
    run_seconds: float | None
    progress: float | None = Field(None, description="0 to 1; while running, and 1 once succeeded")


class JobObject(BaseModel):
    model_config = ConfigDict(title="Job")
    id: str
    object: Literal["job"]
    model: str
    task: Literal["generate", "understand"]
    status: JobStatus
    input: dict[str, Any]
    output: dict[str, Any] | None = Field(
        description="generate: {images: [{url, width, height, content_type}], seed}; "
        "understand: {text, seed, usage: {prompt_tokens, completion_tokens}, finish_reason} "
        "(usage and finish_reason from workers that count them)"
    )
    error: ErrorInfo | None
    batch_id: str | None
    metadata: dict[str, Any]
    webhook: str | None
    webhook_events: list[Literal["started", "completed"]] | None
    attempts: int
    created_at: Timestamp
    started_at: Timestamp | None
    completed_at: Timestamp | None
    deadline_at: Timestamp | None
    cancel_requested: bool
    metrics: JobMetrics
    data_removed: bool = Field(
        description="true once the stored inputs and outputs are deleted (retention or "
        "DELETE): blobs keep their fields but have no url"
    )
    data_removed_at: Timestamp | None
    custom_id: str | None = Field(None, description="a batch line's own id, when it has one")
    queue_position: int | None = Field(
        None, description="while queued: jobs of the same model ahead of this one (0 = next)"
    )


class BatchCounts(BaseModel):
    total: int
    queued: int
    running: int
    succeeded: int
    failed: int
    canceled: int


class BatchObject(BaseModel):
    model_config = ConfigDict(title="Batch")
    id: str
    object: Literal["batch"]
    status: BatchStatus
    counts: BatchCounts
    input_format: Literal["jsonl", "csv"]
    created_at: Timestamp
    started_at: Timestamp | None
    completed_at: Timestamp | None
    webhook: str | None
    metadata: dict[str, Any]


class ResultLine(BaseModel):
    """One line of GET /v1/batches/{id}/results, in upload order."""

    custom_id: str | None
    job_id: str
    status: JobStatus
    output: dict[str, Any] | None
    error: ErrorInfo | None
    data_removed: bool
    data_removed_at: Timestamp | None


def _with_urls(blob: dict[str, Any], storage: Storage | None, expires_in: int) -> dict[str, Any]:
    if storage is None:  # a snapshot for the outbox: keys stay keys until delivery
        return dict(blob)
    return {
        ("url" if k == "key" else k): (storage.url(v, expires_in) if k == "key" else v)
        for k, v in blob.items()
    }


def _output_with_urls(
    output: dict[str, Any] | None,
    storage: Storage | None,
    expires_in: int,
    removed_at: datetime | None = None,
) -> dict[str, Any] | None:
    """Blobs with URLs; once the data is removed they have no key, so no URL either."""
    if isinstance(output, dict) and "images" in output:
        output = {
            **output,
            "images": [_with_urls(i, storage, expires_in) for i in output["images"]],
        }
    if isinstance(output, dict) and removed_at is not None:
        # The shared contract puts the flag on `output` too (docs/API.md, "Retention").
        output = {**output, "data_removed": True, "data_removed_at": iso(removed_at)}
    return output


def job_view(
    job: Job | NewJob, storage: Storage | None, expires_in: int, queue_position: int | None = None
) -> JobObject:
    """The job object. With `storage=None`, blobs keep their storage `key`."""
    data_in = dict(job.input)
    if isinstance(data_in.get("image"), dict):
        data_in["image"] = _with_urls(data_in["image"], storage, expires_in)
    queue_seconds = None
    if job.started_at is not None:
        queue_seconds = round((job.started_at - job.created_at).total_seconds(), 3)
    metrics = JobMetrics(queue_seconds=queue_seconds, run_seconds=job.run_seconds)
    status = JobStatus(job.status)
    if status == JobStatus.RUNNING:
        metrics.progress = round(job.progress or 0.0, 4)
    elif status == JobStatus.SUCCEEDED:
        metrics.progress = 1.0
    obj = JobObject(
        id=job.id,
        object="job",
        model=job.model,
        task=job.task,  # type: ignore[arg-type]
        status=status,
        input=data_in,
        output=_output_with_urls(job.output, storage, expires_in, job.data_removed_at),
        error=job.error,  # type: ignore[arg-type]
        batch_id=job.batch_id,
        metadata=job.metadata_ or {},
        webhook=job.webhook,
        webhook_events=job.webhook_events,
        attempts=job.attempts,
        created_at=job.created_at,
        started_at=job.started_at,
        completed_at=job.completed_at,
        deadline_at=job.deadline_at,
        cancel_requested=job.cancel_requested,
        metrics=metrics,
        data_removed=job.data_removed_at is not None,
        data_removed_at=job.data_removed_at,
    )
    if job.custom_id is not None:
        obj.custom_id = job.custom_id
    if status == JobStatus.QUEUED:
        obj.queue_position = queue_position
    return obj


def job_object(
    job: Job | NewJob, storage: Storage | None, expires_in: int, queue_position: int | None = None
) -> dict[str, Any]:
    return public(job_view(job, storage, expires_in, queue_position))


def batch_view(batch: Batch) -> BatchObject:
    return BatchObject(
        id=batch.id,
        object="batch",
        status=BatchStatus(batch.status),
        counts=BatchCounts(
            total=batch.total,
            queued=batch.n_queued,
            running=batch.n_running,
            succeeded=batch.n_succeeded,
            failed=batch.n_failed,
            canceled=batch.n_canceled,
        ),
        input_format=batch.input_format,  # type: ignore[arg-type]
        created_at=batch.created_at,
        started_at=batch.started_at,
        completed_at=batch.completed_at,
        webhook=batch.webhook,
        metadata=batch.metadata_ or {},
    )


def batch_object(batch: Batch) -> dict[str, Any]:
    return public(batch_view(batch))


def result_line(row: Any, storage: Storage, expires_in: int) -> ResultLine:
    """A results row (custom_id, id, status, output, error, data_removed_at) with fresh URLs."""
    return ResultLine(
        custom_id=row.custom_id,
        job_id=row.id,
        status=row.status,
        output=_output_with_urls(row.output, storage, expires_in, row.data_removed_at),
        error=row.error,
        data_removed=row.data_removed_at is not None,
        data_removed_at=row.data_removed_at,
    )


def with_fresh_urls(obj: dict[str, Any], storage: Storage, expires_in: int) -> dict[str, Any]:
    """Turn a snapshot's storage keys into presigned URLs (used when delivering webhooks)."""
    out = dict(obj)
    if isinstance(out.get("input"), dict) and isinstance(out["input"].get("image"), dict):
        out["input"] = {
            **out["input"],
            "image": _with_urls(out["input"]["image"], storage, expires_in),
        }
    if "output" in out:
        out["output"] = _output_with_urls(out["output"], storage, expires_in)
    return out
