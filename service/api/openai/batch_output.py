"""Writing a finished batch's output and error files, in OpenAI's result-line format.

`{"id", "custom_id", "response": {"status_code", "request_id", "body"}, "error"}`, one
line per request in upload order: succeeded requests go to the output file, failed
ones (a response with the error body) and canceled or expired ones (`error` set, no
response) to the error file. `request_id` is the job id, so GET /v1/jobs/{id} finds
any line's job (for example for fresh image URLs once the file's have expired).

The files are written once, when a reader first finds the batch's jobs all finished
(OpenAI's `finalizing`); lines are spooled to disk past a few MB, so a large batch of
b64_json images never sits in memory whole.
"""

from __future__ import annotations

import json
import tempfile
from typing import IO, Any

from service.api.context import current_key, db, runtime
from service.api.openai.files import storage_key
from service.api.openai.render import chat_completion, failure_body, images_body
from service.api.openai.translate import RESPONSE_FORMAT_KEY
from service.core.tables import OpenAIBatch
from service.lifecycle import openai_records as records
from service.lifecycle.status import JobStatus

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


def result_line(row: Any, expired: bool) -> tuple[dict[str, Any], bool]:
    """(the line, whether it belongs in the output file rather than the error file)."""
    rt = runtime()
    line: dict[str, Any] = {"id": f"batch_req_{row.id.removeprefix('job_')}",
                            "custom_id": row.custom_id, "response": None, "error": None}
    if row.status == JobStatus.SUCCEEDED and row.data_removed_at is None:
        try:
            if row.task == "generate":
                fmt = (row.metadata_ or {}).get(RESPONSE_FORMAT_KEY, "url")
                body = images_body(row, fmt, rt.storage, rt.settings.url_expiry_seconds)
            else:
                body = chat_completion(row)
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


def _store(spool: IO[bytes], purpose: str, filename: str) -> str:
    rt = runtime()
    file_id = records.new_file_id()
    key = storage_key(file_id)
    size = spool.tell()
    spool.seek(0)
    rt.storage.put_file(key, spool, "application/jsonl")  # type: ignore[arg-type]
    records.create_file(session=db(), api_key_id=current_key().id, file_id=file_id,
                        purpose=purpose, filename=filename, size=size, key=key)
    return file_id


def finalize(record: OpenAIBatch) -> None:
    """Write the files and mark the record finalized (the caller checked the batch is
    terminal). A concurrent finalizer holds the row: then this returns at once."""
    session = db()
    locked = records.lock_for_finalizing(session=session, record_id=record.id)
    if locked is None or locked.batch_id is None:
        session.rollback()
        return
    expired = locked.expired_at is not None
    with (tempfile.SpooledTemporaryFile(SPOOL_BYTES) as out,
          tempfile.SpooledTemporaryFile(SPOOL_BYTES) as err):
        for row in records.iter_outcomes(session=session, batch_id=locked.batch_id):
            line, ok = result_line(row, expired)
            (out if ok else err).write(json.dumps(line).encode() + b"\n")
        output_id = _store(out, "batch_output", f"{locked.id}_output.jsonl") if out.tell() \
            else None
        error_id = _store(err, "batch_output", f"{locked.id}_error.jsonl") if err.tell() \
            else None
    records.finalized(session=session, record=locked, output_file_id=output_id,
                      error_file_id=error_id)
    session.commit()
