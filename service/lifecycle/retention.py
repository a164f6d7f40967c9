"""Retention: a finished job's stored inputs and outputs are deleted, the job is kept.

The job keeps every field; its blobs lose their storage `key` (so no URL can be
made for them) and `data_removed_at` records when. This is job data, not a status
change: a finished job stays finished, so nothing here goes through the hook and
no webhook is sent. The sweeper removes jobs past `JANUS_RETENTION_SECONDS` in
bounded passes; `DELETE /v1/jobs/{id}` removes one job's at once.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.core.storage import Storage
from service.core.tables import Job, utcnow
from service.lifecycle.status import TERMINAL, JobStatus

BATCH = 200  # jobs per sweep pass: a backlog is worked off over a few sweeps


class NotFinished(Exception):
    """The job is queued or running: its data is still in use."""


def stored_keys(job: Job, storage: Storage) -> list[str]:
    """Every object the job may have in storage.

    The row names its input image and output images. A job that ran but did not
    succeed may have left images of an interrupted upload under its prefix (keys
    are deterministic, so only then), and those are listed.
    """
    keys = []
    image = job.input.get("image") if isinstance(job.input, dict) else None
    if isinstance(image, dict) and image.get("key"):
        keys.append(image["key"])
    output = job.output if isinstance(job.output, dict) else {}
    keys += [i["key"] for i in output.get("images", []) if isinstance(i, dict) and "key" in i]
    if job.status != JobStatus.SUCCEEDED and job.attempts > 0:
        keys += storage.list(f"jobs/{job.id}/")
    return sorted(set(keys))


def _without_key(blob: Any) -> Any:
    return {k: v for k, v in blob.items() if k != "key"} if isinstance(blob, dict) else blob


def remove_data(*, session: Session, storage: Storage, jobs: list[Job], now: datetime) -> None:
    """Delete the jobs' objects, then mark the (locked) rows; the caller commits.

    Objects go first: if storage fails, StorageError propagates, the caller rolls
    back and the rows stay unmarked, to be tried again. Deleting twice is harmless.
    """
    keys = [key for job in jobs for key in stored_keys(job, storage)]
    if keys:
        storage.delete(keys)
    for job in jobs:
        if isinstance(job.input, dict) and "image" in job.input:
            job.input = {**job.input, "image": _without_key(job.input["image"])}
        if isinstance(job.output, dict) and "images" in job.output:
            job.output = {
                **job.output,
                "images": [_without_key(i) for i in job.output["images"]],
            }
        job.data_removed_at = now
    session.flush()


def remove_job_data(*, session: Session, storage: Storage, job: Job) -> Job:
    """DELETE /v1/jobs/{id}: a finished job's data goes now; queued or running: NotFinished."""
    locked = session.scalar(
        select(Job).where(Job.id == job.id).with_for_update().execution_options(
            populate_existing=True
        )
    )
    assert locked is not None
    if JobStatus(locked.status) not in TERMINAL:
        raise NotFinished(locked.status)
    if locked.data_removed_at is None:
        remove_data(session=session, storage=storage, jobs=[locked], now=utcnow())
    return locked


def expire_data(
    *, session: Session, storage: Storage, now: datetime, retention_seconds: int
) -> list[str]:
    """One bounded pass: jobs finished more than `retention_seconds` ago lose their data."""
    if retention_seconds <= 0:
        return []  # kept forever
    cutoff = now - timedelta(seconds=retention_seconds)
    jobs = list(
        session.scalars(
            select(Job)
            .where(
                Job.data_removed_at.is_(None),
                Job.completed_at < cutoff,
                Job.status.in_([s.value for s in TERMINAL]),
            )
            .order_by(Job.completed_at)
            .limit(BATCH)
            .with_for_update(skip_locked=True)
        )
    )
    if jobs:
        remove_data(session=session, storage=storage, jobs=jobs, now=now)
    return [job.id for job in jobs]
