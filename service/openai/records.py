"""The OpenAI-compatible face's own rows (files, and what an OpenAI batch adds to ours)
and the names it stores things under, for the API and the dispatcher alike.

Jobs and batches themselves are created, canceled and counted by the lifecycle
exactly as for /v1; these rows only remember OpenAI's extra fields.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, delete, or_, select, update
from sqlalchemy.orm import Session

from service.core.ids import new_id
from service.core.tables import Batch, Job, OpenAIBatch, OpenAIFile, utcnow
from service.lifecycle.batches import cancel_batch
from service.lifecycle.status import BatchStatus

COMPLETION_WINDOWS = {"24h": timedelta(hours=24)}
TERMINAL = [status.value for status in BatchStatus if status.is_terminal]
# Job metadata: an image request's `response_format` when it is not the default `url`
# (a batch line's images are rendered long after its request was read).
RESPONSE_FORMAT_KEY = "openai_response_format"


def storage_key(file_id: str) -> str:
    """Where an OpenAI file's bytes live in object storage (uploads and result files)."""
    return f"openai/files/{file_id}"


def new_file_id() -> str:
    return "file-" + new_id("f")[2:]  # OpenAI's ids have a dash: file-…


def create_file(
    *, session: Session, api_key_id: str, file_id: str, purpose: str, filename: str,
    size: int, key: str,
) -> OpenAIFile:
    row = OpenAIFile(id=file_id, api_key_id=api_key_id, purpose=purpose, filename=filename,
                     bytes=size, key=key, created_at=utcnow())
    session.add(row)
    session.flush()
    return row


def get_file(*, session: Session, api_key_id: str, file_id: str) -> OpenAIFile | None:
    return session.scalar(select(OpenAIFile).where(
        OpenAIFile.id == file_id, OpenAIFile.api_key_id == api_key_id))


def list_files(
    *, session: Session, api_key_id: str, limit: int, after: str | None, ascending: bool,
    purpose: str | None,
) -> tuple[list[OpenAIFile], bool]:
    query = select(OpenAIFile).where(OpenAIFile.api_key_id == api_key_id)
    if purpose:
        query = query.where(OpenAIFile.purpose == purpose)
    if after:
        query = query.where(OpenAIFile.id > after if ascending else OpenAIFile.id < after)
    order = OpenAIFile.id.asc() if ascending else OpenAIFile.id.desc()
    rows = list(session.scalars(query.order_by(order).limit(limit + 1)))
    return rows[:limit], len(rows) > limit


def delete_file(*, session: Session, file: OpenAIFile) -> None:
    session.execute(delete(OpenAIFile).where(OpenAIFile.id == file.id))


def create_record(
    *, session: Session, api_key_id: str, record_id: str, batch_id: str | None,
    endpoint: str, input_file_id: str, completion_window: str, metadata: dict[str, Any],
    errors: dict[str, Any] | None = None,
) -> OpenAIBatch:
    """The OpenAI batch; with `errors` it failed validation and has no batch of ours."""
    now = utcnow()
    row = OpenAIBatch(
        id=record_id, api_key_id=api_key_id, batch_id=batch_id, endpoint=endpoint,
        input_file_id=input_file_id, completion_window=completion_window, metadata_=metadata,
        errors=errors, created_at=now, expires_at=now + COMPLETION_WINDOWS[completion_window],
        failed_at=now if errors else None,
    )
    session.add(row)
    session.flush()
    return row


def get_record(
    *, session: Session, api_key_id: str | None, record_id: str
) -> tuple[OpenAIBatch, Batch | None] | None:
    """The record and our batch; `api_key_id` None (the dispatcher's tick): any key's."""
    query = (select(OpenAIBatch, Batch)
             .outerjoin(Batch, Batch.id == OpenAIBatch.batch_id)
             .where(OpenAIBatch.id == record_id)
             .execution_options(populate_existing=True))
    if api_key_id is not None:
        query = query.where(OpenAIBatch.api_key_id == api_key_id)
    row = session.execute(query).first()
    return (row[0], row[1]) if row else None


def due_records(
    *, session: Session, now: datetime, limit: int, skip: Collection[str] = ()
) -> list[str]:
    """Batches time has moved on, oldest window first: past their completion window and
    not yet expired, or all their jobs finished and their files not yet written.

    Only unfinalized records with a batch of ours are looked at (a partial index holds
    exactly those), so the cost follows the open batches, not the table's history.
    `skip`: ids left out (batches that failed lately).
    """
    query = (
        select(OpenAIBatch.id)
        .join(Batch, Batch.id == OpenAIBatch.batch_id)
        .where(OpenAIBatch.finalized_at.is_(None), OpenAIBatch.batch_id.is_not(None),
               or_(Batch.status.in_(TERMINAL),
                   and_(OpenAIBatch.expires_at <= now, OpenAIBatch.expired_at.is_(None))))
    )
    if skip:
        query = query.where(OpenAIBatch.id.not_in(list(skip)))
    return list(session.scalars(query.order_by(OpenAIBatch.expires_at, OpenAIBatch.id)
                                .limit(limit)))


def list_records(
    *, session: Session, api_key_id: str, limit: int, after: str | None
) -> tuple[list[tuple[OpenAIBatch, Batch | None]], bool]:
    query = (
        select(OpenAIBatch, Batch)
        .outerjoin(Batch, Batch.id == OpenAIBatch.batch_id)
        .where(OpenAIBatch.api_key_id == api_key_id)
    )
    if after:
        query = query.where(OpenAIBatch.id < after)
    rows = [(r[0], r[1]) for r in session.execute(
        query.order_by(OpenAIBatch.id.desc()).limit(limit + 1))]
    return rows[:limit], len(rows) > limit


def cancel(*, session: Session, record: OpenAIBatch, batch: Batch) -> None:
    """Cancel the batch's jobs (as POST /v1/batches/{id}/cancel does) and note when."""
    session.execute(update(OpenAIBatch)
                    .where(OpenAIBatch.id == record.id, OpenAIBatch.cancelling_at.is_(None))
                    .values(cancelling_at=utcnow()))
    cancel_batch(session=session, batch=batch)
    session.flush()
    session.refresh(record)


def expire_if_due(
    *, session: Session, record: OpenAIBatch, batch: Batch | None, now: datetime
) -> bool:
    """Past its completion window and not finished: cancel what is left, mark it expired.

    The mark is a conditional UPDATE, so of a read and the dispatcher's tick (or two
    dispatchers) racing, one expires the batch and the others find it done: the second
    waits on the first's row lock, then matches no row.
    """
    if batch is None or record.expired_at is not None or now < record.expires_at:
        return False
    if BatchStatus(batch.status).is_terminal:
        return False
    marked = session.execute(
        update(OpenAIBatch)
        .where(OpenAIBatch.id == record.id, OpenAIBatch.expired_at.is_(None),
               OpenAIBatch.finalized_at.is_(None))
        .values(expired_at=now)
    ).rowcount
    if not marked:
        return False
    cancel_batch(session=session, batch=batch)
    session.flush()
    session.refresh(record)
    return True


def lock_for_finalizing(*, session: Session, record_id: str) -> OpenAIBatch | None:
    """The record, locked, if it still needs its files and no one else is writing them.

    SKIP LOCKED: a second reader (or the dispatcher's tick) sees `finalizing` instead of
    waiting for the first. SQLite (`make run`) has no row locks: there a no-op UPDATE
    takes the database's write lock until commit, so a second finalizer waits for the
    first and then finds the record finalized.
    """
    if session.get_bind().dialect.name == "sqlite":
        claimed = session.execute(
            update(OpenAIBatch)
            .where(OpenAIBatch.id == record_id, OpenAIBatch.finalized_at.is_(None))
            .values(finalized_at=None)
        ).rowcount
        if not claimed:
            return None
    return session.scalar(
        select(OpenAIBatch)
        .where(OpenAIBatch.id == record_id, OpenAIBatch.finalized_at.is_(None))
        .with_for_update(skip_locked=True)
        .execution_options(populate_existing=True)
    )


def finalized(
    *, session: Session, record: OpenAIBatch, output_file_id: str | None,
    error_file_id: str | None,
) -> None:
    session.execute(
        update(OpenAIBatch)
        .where(OpenAIBatch.id == record.id)
        .values(output_file_id=output_file_id, error_file_id=error_file_id,
                finalized_at=utcnow())
    )
    session.flush()
    session.refresh(record)


def iter_outcomes(*, session: Session, batch_id: str) -> Iterator[Any]:
    """Every job of the batch in upload order, with what its result line needs."""
    query = (
        select(Job.id, Job.custom_id, Job.status, Job.model, Job.task, Job.input, Job.output,
               Job.error, Job.metadata_, Job.created_at, Job.completed_at, Job.data_removed_at)
        .where(Job.batch_id == batch_id)
        .order_by(Job.line_no)
        .execution_options(yield_per=500)
    )
    yield from session.execute(query)
