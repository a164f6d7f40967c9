"""The one hook every job state change goes through, inside the changing transaction.

Whatever must stay consistent with a job's status (its webhook event, its
batch's counters) is written here, so no code path can change a status and
forget the rest.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from service.outbox import job_event
from service.tables import Job


def job_changed(*, session: Session, job: Job, first_start: bool = True) -> None:
    if job.status == "running" and not first_start:
        return  # a retry after a lost worker is not a new start for the client
    job_event(session=session, job=job)
