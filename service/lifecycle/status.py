"""Job and batch statuses. `str` enums: JSON, SQL and the wire format stay plain strings."""

from __future__ import annotations

from enum import StrEnum


class JobStatus(StrEnum):
    """queued → running → succeeded | failed | canceled; terminal states never change."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL


class BatchStatus(StrEnum):
    """`completed`: every job terminal; `canceling` until the last running job stops."""

    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    CANCELING = "canceling"
    CANCELED = "canceled"

    @property
    def is_terminal(self) -> bool:
        return self in (BatchStatus.COMPLETED, BatchStatus.CANCELED)


TERMINAL = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED})
STATUSES = tuple(JobStatus)


def deadline_error() -> dict[str, str]:
    """The error of a job its Cancel-After deadline canceled (its status is `canceled`)."""
    return {"code": "deadline_exceeded", "message": "the job's Cancel-After deadline passed"}


def is_terminal(status: str) -> bool:
    """For a status read from a row (a plain string)."""
    return JobStatus(status).is_terminal
