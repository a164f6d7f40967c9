"""Writing a finished batch's output and error files, in OpenAI's result-line format.

`{"id", "custom_id", "response": {"status_code", "request_id", "body"}, "error"}`, one
line per request in upload order: succeeded requests go to the output file, failed
ones (a response with the error body) and canceled or expired ones (`error` set, no
response) to the error file. `request_id` is the job id, so GET /v1/jobs/{id} finds
any line's job (for example for fresh image URLs once the file's have expired).

The files are written once, by whichever comes first once the batch's jobs have all
finished (OpenAI's `finalizing`): the dispatcher's tick (batch_tick.py) or a read of the
batch (service/openai/routes/batches.py). It needs no request and no app: the dispatcher
runs it too. Lines are spooled to disk past a few MB, so a large batch of b64_json
images never sits in memory whole.
"""

from __future__ import annotations

import json
import tempfile
from typing import IO, Any

from sqlalchemy.orm import Session

from service.core.settings import Settings
from service.core.storage import Storage
from service.lifecycle.status import JobStatus
from service.openai import records
from service.openai.render import chat_completion, failure_body, images_body

SPOOL_BYTES = 8 * 1024 * 1024


def _canceled(expired: bool) -> dict[str, str]:
    if expired:
        return {"code": "batch_expired", "message": "This request could not be executed "
                "before the completion window expired."}
    return {"code": "batch_cancelled", "message": "This request was canceled before it ran "
            "to the end."}


def _removed() -> dict[str, str]:
    return {"code": "data_removed", "message": "the job's stored output was deleted "
            "(retention or DELETE /v1/jobs/{id})"}


def result_line(row: Any, expired: bool, storage: Storage, settings: Settings
                ) -> tuple[dict[str, Any], bool]:
    """(the line, whether it belongs in the output file rather than the error file)."""
    line: dict[str, Any] = {"id": f"batch_req_{row.id.removeprefix('job_')}",
                            "custom_id": row.custom_id, "response": None, "error": None}
    if row.status == JobStatus.SUCCEEDED and row.data_removed_at is None:
        try:
            if row.task == "generate":
                fmt = (row.metadata_ or {}).get(records.RESPONSE_FORMAT_KEY, "url")
                body = images_body(row, fmt, storage, settings.url_expiry_seconds)
            else:
                body = chat_completion(row, settings.models)
        except KeyError:  # an image deleted since the job finished
            line["error"] = _removed()
            return line, False
        line["response"] = {"status_code": 200, "request_id": row.id, "body": body}
        return line, True
    if row.status == JobStatus.SUCCEEDED:
        line["error"] = _removed()
    elif row.status == JobStatus.FAILED:
        status, body = failure_body(row)
        line["response"] = {"status_code": status, "request_id": row.id, "body": body}
    else:
        line["error"] = _canceled(expired)
    return line, False


def _store(session: Session, storage: Storage, api_key_id: str, spool: IO[bytes],
           filename: str) -> str:
    file_id = records.new_file_id()
    key = records.storage_key(file_id)
    size = spool.tell()
    spool.seek(0)
    storage.put_file(key, spool, "application/jsonl")  # type: ignore[arg-type]
    records.create_file(session=session, api_key_id=api_key_id, file_id=file_id,
                        purpose="batch_output", filename=filename, size=size, key=key)
    return file_id


def finalize(*, session: Session, storage: Storage, settings: Settings, record_id: str) -> bool:
    """Write the files and mark the record finalized, committing; False when there was
    nothing to do (the caller checked the batch is terminal): already finalized, or a
    concurrent finalizer holds the row, in which case this returns at once."""
    locked = records.lock_for_finalizing(session=session, record_id=record_id)
    if locked is None or locked.batch_id is None:
        session.rollback()
        return False
    expired = locked.expired_at is not None
    with (tempfile.SpooledTemporaryFile(SPOOL_BYTES) as out,
          tempfile.SpooledTemporaryFile(SPOOL_BYTES) as err):
        for row in records.iter_outcomes(session=session, batch_id=locked.batch_id):
            line, ok = result_line(row, expired, storage, settings)
            (out if ok else err).write(json.dumps(line).encode() + b"\n")
        stored = [_store(session, storage, locked.api_key_id, spool,
                         f"{locked.id}_{name}.jsonl") if spool.tell() else None
                  for spool, name in ((out, "output"), (err, "error"))]
    records.finalized(session=session, record=locked, output_file_id=stored[0],
                      error_file_id=stored[1])
    session.commit()
    return True
