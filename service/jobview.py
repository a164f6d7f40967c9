"""The public job object (API.md), built from a row. Storage keys become fresh URLs."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from service.core.storage import Storage
from service.core.tables import Batch, Job


def iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _with_urls(blob: dict[str, Any], storage: Storage | None, expires_in: int) -> dict[str, Any]:
    if storage is None:  # a snapshot for the outbox: keys stay keys until delivery
        return dict(blob)
    return {
        ("url" if k == "key" else k): (storage.url(v, expires_in) if k == "key" else v)
        for k, v in blob.items()
    }


def job_object(
    job: Job, storage: Storage | None, expires_in: int, queue_position: int | None = None
) -> dict[str, Any]:
    """The API's job object. With `storage=None`, blobs keep their storage `key`."""
    data_in = dict(job.input)
    if isinstance(data_in.get("image"), dict):
        data_in["image"] = _with_urls(data_in["image"], storage, expires_in)
    output = job.output
    if output and "images" in output:
        output = {
            **output,
            "images": [_with_urls(i, storage, expires_in) for i in output["images"]],
        }
    queue_seconds = None
    if job.started_at is not None:
        queue_seconds = round((job.started_at - job.created_at).total_seconds(), 3)
    metrics: dict[str, Any] = {"queue_seconds": queue_seconds, "run_seconds": job.run_seconds}
    if job.status == "running":
        metrics["progress"] = round(job.progress or 0.0, 4)
    elif job.status == "succeeded":
        metrics["progress"] = 1.0
    obj: dict[str, Any] = {
        "id": job.id,
        "object": "job",
        "model": job.model,
        "task": job.task,
        "status": job.status,
        "input": data_in,
        "output": output,
        "error": job.error,
        "batch_id": job.batch_id,
        "metadata": job.metadata_ or {},
        "webhook": job.webhook,
        "webhook_events": job.webhook_events,
        "attempts": job.attempts,
        "created_at": iso(job.created_at),
        "started_at": iso(job.started_at),
        "completed_at": iso(job.completed_at),
        "deadline_at": iso(job.deadline_at),
        "cancel_requested": job.cancel_requested,
        "metrics": metrics,
    }
    if job.custom_id is not None:
        obj["custom_id"] = job.custom_id
    if job.status == "queued":
        obj["queue_position"] = queue_position
    return obj


def with_fresh_urls(obj: dict[str, Any], storage: Storage, expires_in: int) -> dict[str, Any]:
    """Turn a snapshot's storage keys into presigned URLs (used when delivering webhooks)."""
    out = dict(obj)
    if isinstance(out.get("input"), dict) and isinstance(out["input"].get("image"), dict):
        out["input"] = {
            **out["input"],
            "image": _with_urls(out["input"]["image"], storage, expires_in),
        }
    output = out.get("output")
    if isinstance(output, dict) and "images" in output:
        out["output"] = {
            **output,
            "images": [_with_urls(i, storage, expires_in) for i in output["images"]],
        }
    return out


def batch_object(batch: Batch) -> dict[str, Any]:
    return {
        "id": batch.id,
        "object": "batch",
        "status": batch.status,
        "counts": {
            "total": batch.total,
            "queued": batch.n_queued,
            "running": batch.n_running,
            "succeeded": batch.n_succeeded,
            "failed": batch.n_failed,
            "canceled": batch.n_canceled,
        },
        "input_format": batch.input_format,
        "created_at": iso(batch.created_at),
        "started_at": iso(batch.started_at),
        "completed_at": iso(batch.completed_at),
        "webhook": batch.webhook,
        "metadata": batch.metadata_ or {},
    }
