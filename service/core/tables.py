"""Database tables. Postgres is the source of truth; Redis only carries job ids."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

JSONType = JSON().with_variant(JSONB(), "postgresql")


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator):
    """Timezone-aware UTC on the way out, whatever the backend (SQLite drops tzinfo)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime")
        if value is not None and dialect.name == "sqlite":
            return value.astimezone(UTC).replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    pass


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)  # sha256 hex
    key_prefix: Mapped[str] = mapped_column(String(16))
    webhook_secret: Mapped[str] = mapped_column(String(100))
    # During rotation the old secret keeps signing alongside until this time.
    previous_webhook_secret: Mapped[str | None] = mapped_column(String(100))
    previous_secret_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class Batch(Base):
    __tablename__ = "batches"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    api_key_id: Mapped[str] = mapped_column(ForeignKey("api_keys.id"), index=True)
    # A BatchStatus, written only by service.lifecycle (which always sets it).
    status: Mapped[str] = mapped_column(String(16))
    total: Mapped[int] = mapped_column(Integer, default=0)
    # Job counts by status, kept in the transactions that change job statuses, so a
    # poll reads one row instead of aggregating thousands.
    n_queued: Mapped[int] = mapped_column(Integer, default=0)
    n_running: Mapped[int] = mapped_column(Integer, default=0)
    n_succeeded: Mapped[int] = mapped_column(Integer, default=0)
    n_failed: Mapped[int] = mapped_column(Integer, default=0)
    n_canceled: Mapped[int] = mapped_column(Integer, default=0)
    input_format: Mapped[str] = mapped_column(String(8), default="jsonl")
    webhook: Mapped[str | None] = mapped_column(Text)
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", JSONType, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        UniqueConstraint("api_key_id", "idempotency_key", name="uq_jobs_idempotency"),
        Index("ix_jobs_key_id", "api_key_id", "id"),
        Index("ix_jobs_model_status_lane", "model", "status", "lane", "id"),
        Index("ix_jobs_status_lease", "status", "lease_expires_at"),
        Index("ix_jobs_batch", "batch_id", "line_no"),
        # The retention sweep: finished jobs whose data is still stored, oldest first.
        Index("ix_jobs_retention", "data_removed_at", "completed_at"),
    )

    # Ids sort by creation time, so "newest first" and cursors are `ORDER BY id`.
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    api_key_id: Mapped[str] = mapped_column(ForeignKey("api_keys.id"))
    model: Mapped[str] = mapped_column(String(100))
    task: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16))  # a JobStatus, see service.lifecycle
    input: Mapped[dict[str, Any]] = mapped_column(JSONType)
    output: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", JSONType, default=dict)
    webhook: Mapped[str | None] = mapped_column(Text)
    webhook_events: Mapped[list[str]] = mapped_column(JSONType, default=list)

    batch_id: Mapped[str | None] = mapped_column(ForeignKey("batches.id"))
    custom_id: Mapped[str | None] = mapped_column(String(200))
    line_no: Mapped[int | None] = mapped_column(Integer)
    # 0 = interactive, 1 = bulk; lower lanes are served first.
    lane: Mapped[int] = mapped_column(Integer, default=0)

    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    request_hash: Mapped[str | None] = mapped_column(String(64))

    attempts: Mapped[int] = mapped_column(Integer, default=0)
    worker_id: Mapped[str | None] = mapped_column(String(200))
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    deadline_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    progress: Mapped[float | None] = mapped_column(Float)

    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # Last time a message for this job was handed to the broker; NULL = publish failed.
    enqueued_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    run_seconds: Mapped[float | None] = mapped_column(Float)
    # When the job's stored inputs and outputs were deleted (retention or DELETE); NULL
    # while they are kept. Not a status: a finished job stays finished.
    data_removed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class QueueCount(Base):
    """How many jobs are queued per model and lane: the sum of a few shard rows.

    Kept in the same transactions as the jobs' status changes (service/lifecycle/
    queues.py), so any snapshot agrees with the jobs table; a queue position is then
    read from a handful of rows instead of counting the queue. Shards spread the
    writers: each submit adds 1 to a random shard, so concurrent submits rarely wait
    on one row lock held through a commit. A shard can go negative; only sums mean
    anything.
    """

    __tablename__ = "queue_counts"

    model: Mapped[str] = mapped_column(String(100), primary_key=True)
    lane: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    shard: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    n: Mapped[int] = mapped_column(BigInteger, default=0)


class WebhookEvent(Base):
    """Outbox: written in the transaction that changes a job's state, delivered later."""

    __tablename__ = "webhook_events"
    __table_args__ = (Index("ix_webhook_events_due", "status", "next_attempt_at"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)  # the webhook-id header
    api_key_id: Mapped[str] = mapped_column(ForeignKey("api_keys.id"))
    job_id: Mapped[str | None] = mapped_column(ForeignKey("jobs.id"), index=True)
    batch_id: Mapped[str | None] = mapped_column(ForeignKey("batches.id"), index=True)
    type: Mapped[str] = mapped_column(String(40))
    url: Mapped[str] = mapped_column(Text)
    payload: Mapped[dict[str, Any]] = mapped_column(JSONType)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class WebhookDelivery(Base):
    __tablename__ = "webhook_deliveries"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(ForeignKey("webhook_events.id"), index=True)
    attempted_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    status_code: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    duration_ms: Mapped[float | None] = mapped_column(Float)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class Worker(Base):
    """A live worker process; GET /v1/models counts those with a fresh heartbeat."""

    __tablename__ = "workers"

    id: Mapped[str] = mapped_column(String(200), primary_key=True)
    model: Mapped[str] = mapped_column(String(100), index=True)
    hostname: Mapped[str] = mapped_column(String(200))
    device: Mapped[str] = mapped_column(String(40))
    max_batch: Mapped[int] = mapped_column(Integer, default=1)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    heartbeat_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class LiveEvent(Base):
    """Live job events in the embedded mode (no Redis): service/core/events_sql.py.

    Ids only grow (SQLite AUTOINCREMENT never reuses one), so "after id N" is a cursor.
    `stream` is a job or batch id; no foreign key, the rows expire on their own.
    """

    __tablename__ = "live_events"
    __table_args__ = (
        Index("ix_live_events_stream", "stream", "id"),
        Index("ix_live_events_expires", "expires_at"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    stream: Mapped[str] = mapped_column(String(40))
    kind: Mapped[str] = mapped_column(String(16))
    data: Mapped[dict[str, Any]] = mapped_column(JSONType)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())


class OpenAIFile(Base):
    """A file of the OpenAI-compatible face (/openai/v1/files): an uploaded batch input, or
    a batch's output or error file. The bytes live in object storage under `key`."""

    __tablename__ = "openai_files"
    __table_args__ = (Index("ix_openai_files_key_id", "api_key_id", "id"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)  # file-…
    api_key_id: Mapped[str] = mapped_column(ForeignKey("api_keys.id"))
    purpose: Mapped[str] = mapped_column(String(32))  # batch | batch_output
    filename: Mapped[str] = mapped_column(String(255))
    bytes: Mapped[int] = mapped_column(BigInteger)
    key: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class OpenAIBatch(Base):
    """What an OpenAI batch adds to one of our batches: its input file, endpoint, window,
    timestamps and result files. `batch_id` is NULL for a batch that failed validation
    (nothing was enqueued); otherwise the two share one id."""

    __tablename__ = "openai_batches"
    __table_args__ = (
        Index("ix_openai_batches_key_id", "api_key_id", "id"),
        # The dispatcher's tick looks only at batches still open (openai.records.due_records).
        Index("ix_openai_batches_open", "expires_at",
              postgresql_where=text("finalized_at IS NULL AND batch_id IS NOT NULL"),
              sqlite_where=text("finalized_at IS NULL AND batch_id IS NOT NULL")),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)  # batch_…
    api_key_id: Mapped[str] = mapped_column(ForeignKey("api_keys.id"))
    batch_id: Mapped[str | None] = mapped_column(ForeignKey("batches.id"))
    endpoint: Mapped[str] = mapped_column(String(64))
    input_file_id: Mapped[str] = mapped_column(String(40))
    completion_window: Mapped[str] = mapped_column(String(16))
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", JSONType, default=dict)
    # Validation failures: {"object": "list", "data": [{code, message, param, line}]}.
    errors: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    output_file_id: Mapped[str | None] = mapped_column(String(40))
    error_file_id: Mapped[str | None] = mapped_column(String(40))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    failed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    cancelling_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    expired_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # Set once the output and error files are written: the batch is then terminal.
    finalized_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
