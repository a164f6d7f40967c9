"""Single jobs: creating one, reading and listing, canceling, and handing it to the broker.

Every status change goes through `service.lifecycle.hook.transition`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from celery import Celery
from sqlalchemy import Engine, select, update
from sqlalchemy.orm import Session

from service.core import events
from service.core.broker import publish
from service.core.ids import new_id
from service.core.images import CheckedImage
from service.core.storage import Storage
from service.core.tables import Job, utcnow
from service.lifecycle import queues
from service.lifecycle.hook import transition
from service.lifecycle.status import JobStatus

INTERACTIVE_LANE = 0  # single jobs; batch lines run in a lower lane (service.lifecycle.batches)


@dataclass
class JobSpec:
    """A checked job body, as the API accepted it (one request or one batch line)."""

    model: str
    task: str
    input: dict[str, Any]  # validated; seed chosen; the image travels separately
    image: CheckedImage | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    webhook: str | None = None
    webhook_events: list[str] | None = None
    custom_id: str | None = None
    line_no: int | None = None


def store_input_image(storage: Storage, job_id: str, spec: JobSpec) -> dict[str, Any]:
    """The job's stored input: the image goes to storage first, the row keeps its key.

    Stored before the row exists, so a worker never sees a job without its image.
    """
    stored = dict(spec.input)
    image = spec.image
    if image is not None:
        key = f"inputs/{job_id}/image.{image.extension}"
        storage.put(key, image.data, image.content_type)
        stored["image"] = {
            "key": key,
            "content_type": image.content_type,
            "width": image.width,
            "height": image.height,
            "bytes": len(image.data),
        }
    return stored


@dataclass(slots=True)
class NewJob:
    """A job just inserted by `create_job`: its values, outside the ORM.

    It has every attribute of `Job` that the job object shows (the views read either):
    an ORM instance's attribute instrumentation cost more than the rest of the
    response on the submit path.
    """

    id: str
    api_key_id: str
    model: str
    task: str
    input: dict[str, Any]
    metadata_: dict[str, Any]
    webhook: str | None
    webhook_events: list[str]
    idempotency_key: str | None
    request_hash: str | None
    created_at: datetime
    enqueued_at: datetime
    deadline_at: datetime | None
    status: str = JobStatus.QUEUED.value
    lane: int = INTERACTIVE_LANE
    attempts: int = 0
    cancel_requested: bool = False
    output: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    batch_id: str | None = None
    custom_id: str | None = None
    line_no: int | None = None
    started_at: datetime | None = None
    completed_at: datetime | None = None
    run_seconds: float | None = None
    progress: float | None = None
    data_removed_at: datetime | None = None

    def row(self) -> dict[str, Any]:
        """The INSERT's values, by column name."""
        return {
            name: getattr(self, "metadata_" if name == "metadata" else name)
            for name in queues.INSERTED
        }


def create_job(
    *,
    db: Engine,
    storage: Storage,
    api_key_id: str,
    spec: JobSpec,
    idempotency_key: str | None = None,
    request_hash: str | None = None,
    cancel_after: float | None = None,
) -> tuple[NewJob, int]:
    """Insert and commit a queued job; returns it and its queue position (then publish).

    Takes the database (`db`), not a session: on the submit path the ORM's session and unit
    of work cost more CPU than the statement. On Postgres one statement inserts the
    row, counts the job into its queue and reads its position, committed on its own
    (service/lifecycle/queues.py, `insert_queued`).
    """
    job_id = new_id("job")
    now = utcnow()
    job = NewJob(
        id=job_id,
        api_key_id=api_key_id,
        model=spec.model,
        task=spec.task,
        input=store_input_image(storage, job_id, spec),
        metadata_=spec.metadata,
        webhook=spec.webhook,
        webhook_events=spec.webhook_events or ["completed"],
        idempotency_key=idempotency_key,
        request_hash=request_hash,
        created_at=now,
        enqueued_at=now,
        deadline_at=now + timedelta(seconds=cancel_after) if cancel_after else None,
    )
    return job, queues.insert_queued(db, job.row())


def publish_jobs(
    *,
    session: Session,
    celery: Celery,
    wakeups: list[tuple[str, str]],
    job_ids: list[str],
    max_retries: int,
) -> None:
    """After the commit: publish; if the broker is away, leave `job_ids` to the sweeper.

    The caller commits again when this marks rows unpublished.
    """
    if publish(celery, wakeups, max_retries):
        mark_unpublished(session=session, job_ids=job_ids)


def mark_unpublished(*, session: Session, job_ids: list[str]) -> None:
    """The broker refused the message: let the sweeper publish it as soon as it can."""
    session.execute(
        update(Job)
        .where(Job.id.in_(job_ids), Job.status == JobStatus.QUEUED)
        .values(enqueued_at=None)
    )


def get_job(*, session: Session, api_key_id: str, job_id: str) -> Job | None:
    return session.scalar(select(Job).where(Job.id == job_id, Job.api_key_id == api_key_id))


def find_by_idempotency_key(*, session: Session, api_key_id: str, key: str) -> Job | None:
    return session.scalar(
        select(Job).where(Job.api_key_id == api_key_id, Job.idempotency_key == key)
    )


def list_jobs(
    *,
    session: Session,
    api_key_id: str,
    limit: int,
    after: str | None = None,
    status: str | None = None,
    model: str | None = None,
    batch_id: str | None = None,
) -> tuple[list[Job], bool]:
    """Newest first; `after` is the id of the last job of the previous page."""
    query = select(Job).where(Job.api_key_id == api_key_id)
    if status:
        query = query.where(Job.status == status)
    if model:
        query = query.where(Job.model == model)
    if batch_id:
        query = query.where(Job.batch_id == batch_id)
    if after:
        query = query.where(Job.id < after)
    rows = list(session.scalars(query.order_by(Job.id.desc()).limit(limit + 1)))
    return rows[:limit], len(rows) > limit


def queue_position(*, session: Session, job: Job | NewJob) -> int:
    """How many queued jobs of the same model a worker takes before this one.

    Read from the kept queue counts (service/lifecycle/queues.py says what exactly
    it counts), on the session's connection and transaction.
    """
    return queues.position(session.connection(), model=job.model, lane=job.lane, job_id=job.id)


def canceled_now() -> dict[str, Any]:
    """The values of a queued job canceled before it ever ran."""
    return {"status": JobStatus.CANCELED, "completed_at": utcnow(), "cancel_requested": True}


def request_cancel(*, session: Session, job: Job) -> Job:
    """Queued: canceled at once. Running: flagged, the worker stops at its next step.

    The worker holding a running job is told once this commits (a push to its own
    stream), so it stops within a step rather than at its next lease renewal.
    """
    moved = []
    if job.status == JobStatus.QUEUED:
        moved = transition(
            session=session,
            previous=JobStatus.QUEUED,
            where=[Job.id == job.id],
            values=canceled_now(),
        )
    if not moved and job.status in (JobStatus.QUEUED, JobStatus.RUNNING):
        # Running, or claimed since it was read as queued: flag it where it runs now.
        held = session.execute(
            update(Job)
            .where(Job.id == job.id, Job.status == JobStatus.RUNNING)
            .values(cancel_requested=True)
            .returning(Job.id, Job.worker_id)
        ).all()
        events.push_cancels_on_commit(session, [(row.id, row.worker_id) for row in held])
    session.flush()
    session.refresh(job)
    return job

