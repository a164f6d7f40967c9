"""Single jobs: creating one, reading and listing, canceling, and handing it to the broker.

Every status change goes through `service.lifecycle.hook.transition`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from celery import Celery
from sqlalchemy import Connection, Engine, select, update
from sqlalchemy.orm import Session

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


@contextmanager
def submit_connection(engine: Engine) -> Iterator[Connection]:
    """The connection a submit writes on (`create_job`), without an ORM session.

    On Postgres it autocommits: the submit's one statement is committed on its own,
    with no BEGIN and COMMIT round trips. Elsewhere (the embedded SQLite) its three
    statements are committed together when the block ends.
    """
    if engine.dialect.name == "postgresql":
        with engine.connect() as connection:
            yield connection.execution_options(isolation_level="AUTOCOMMIT")
    else:
        with engine.begin() as connection:
            yield connection


def create_job(
    *,
    connection: Connection,
    storage: Storage,
    api_key_id: str,
    spec: JobSpec,
    idempotency_key: str | None = None,
    request_hash: str | None = None,
    cancel_after: float | None = None,
) -> tuple[Job, int]:
    """Insert a queued job; returns it and its queue position (then: commit, publish).

    Takes a connection (`submit_connection`), not a session: on the submit path the
    ORM's session and unit of work cost more CPU than the statement. One statement on
    Postgres inserts the row, counts the job into its queue and reads its position
    (service/lifecycle/queues.py); on an autocommit connection the job is committed
    when this returns. The returned Job is in no session: it only carries the values
    for the response.
    """
    job_id = new_id("job")
    now = utcnow()
    job = Job(
        id=job_id,
        api_key_id=api_key_id,
        model=spec.model,
        task=spec.task,
        status=JobStatus.QUEUED,
        input=store_input_image(storage, job_id, spec),
        metadata_=spec.metadata,
        webhook=spec.webhook,
        webhook_events=spec.webhook_events or ["completed"],
        lane=INTERACTIVE_LANE,
        attempts=0,
        cancel_requested=False,
        idempotency_key=idempotency_key,
        request_hash=request_hash,
        created_at=now,
        enqueued_at=now,
        deadline_at=now + timedelta(seconds=cancel_after) if cancel_after else None,
    )
    values = {
        name: getattr(job, "metadata_" if name == "metadata" else name)
        for name in queues.INSERTED
    }
    return job, queues.insert_queued(connection, values)


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


def queue_position(*, session: Session, job: Job) -> int:
    """How many queued jobs of the same model a worker takes before this one.

    Read from the kept queue counts (service/lifecycle/queues.py says what exactly
    it counts), on the session's connection and transaction.
    """
    return queues.position(session.connection(), model=job.model, lane=job.lane, job_id=job.id)


def canceled_now() -> dict[str, Any]:
    """The values of a queued job canceled before it ever ran."""
    return {"status": JobStatus.CANCELED, "completed_at": utcnow(), "cancel_requested": True}


def request_cancel(*, session: Session, job: Job) -> Job:
    """Queued: canceled at once. Running: flagged, the worker stops at its next step."""
    if job.status == JobStatus.QUEUED:
        transition(
            session=session,
            previous=JobStatus.QUEUED,
            where=[Job.id == job.id],
            values=canceled_now(),
        )
    elif job.status == JobStatus.RUNNING:
        session.execute(update(Job).where(Job.id == job.id).values(cancel_requested=True))
    session.flush()
    session.refresh(job)
    return job

