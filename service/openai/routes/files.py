"""/openai/v1/files: upload a batch input file, read, list, download and delete files.

The bytes live in object storage under `openai/files/<id>`; a row per file remembers
its name, purpose and size. A key sees only its own files (another key's id is 404).
"""

from __future__ import annotations

from typing import Any

from flask import Response, jsonify, request, stream_with_context

from service.api.context import current_key, db, runtime
from service.api.parsing.bodies import text_problems
from service.core.tables import OpenAIFile
from service.openai import records
from service.openai.routes.blueprint import OpenAIError, bad_request, bp

UPLOAD_PURPOSES = ("batch",)
MAX_LIST = 10_000


def file_object(row: OpenAIFile) -> dict[str, Any]:
    return {"id": row.id, "object": "file", "bytes": row.bytes,
            "created_at": int(row.created_at.timestamp()), "filename": row.filename,
            "purpose": row.purpose, "status": "processed", "status_details": None,
            "expires_at": None}


def owned_file(file_id: str, param: str = "file_id") -> OpenAIFile:
    row = records.get_file(session=db(), api_key_id=current_key().id, file_id=file_id)
    if row is None:
        raise OpenAIError(404, f"No such File object: {file_id[:100]}", param=param)
    return row


@bp.post("/files")
def upload_file() -> Response:
    rt = runtime()
    request.max_content_length = rt.settings.batch_max_bytes  # as large as batch uploads
    if request.mimetype != "multipart/form-data":
        raise bad_request("send multipart/form-data with parts 'file' and 'purpose'")
    purpose = request.form.get("purpose")
    if purpose not in UPLOAD_PURPOSES:
        raise bad_request(f"purpose must be one of: {', '.join(UPLOAD_PURPOSES)}", "purpose")
    upload = request.files.get("file")
    if upload is None:
        raise bad_request("a file part named 'file' is required", "file")
    filename = (upload.filename or "upload.jsonl")[:255]
    if text_problems(filename):
        raise bad_request("the file name must be valid text without NUL", "file")
    data = upload.read()
    if not data:
        raise bad_request("the file is empty", "file")
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise bad_request(f"a batch file is UTF-8 JSONL text: {exc}", "file") from exc
    file_id = records.new_file_id()
    key = records.storage_key(file_id)
    rt.storage.put(key, data, "application/jsonl")  # stored before the row names it
    session = db()
    row = records.create_file(session=session, api_key_id=current_key().id, file_id=file_id,
                              purpose=purpose, filename=filename, size=len(data), key=key)
    session.commit()
    return jsonify(file_object(row))


@bp.get("/files")
def list_files() -> Response:
    args = request.args
    raw = args.get("limit", str(MAX_LIST))
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_LIST:
        raise bad_request(f"limit must be an integer from 1 to {MAX_LIST}", "limit")
    order = args.get("order", "desc")
    if order not in ("asc", "desc"):
        raise bad_request("order must be asc or desc", "order")
    rows, has_more = records.list_files(
        session=db(), api_key_id=current_key().id, limit=int(raw),
        after=args.get("after") or None, ascending=order == "asc",
        purpose=args.get("purpose") or None)
    return jsonify({"object": "list", "data": [file_object(r) for r in rows],
                  "first_id": rows[0].id if rows else None,
                  "last_id": rows[-1].id if rows else None, "has_more": has_more})


@bp.get("/files/<file_id>")
def read_file(file_id: str) -> Response:
    return jsonify(file_object(owned_file(file_id)))


@bp.get("/files/<file_id>/content")
def file_content(file_id: str) -> Response:
    row = owned_file(file_id)
    chunks = runtime().storage.iter_chunks(row.key)
    try:
        first = next(chunks, b"")  # a missing object is a 404 before the headers go out
    except KeyError as exc:
        raise OpenAIError(404, f"the content of {file_id} is gone", param="file_id") from exc

    def body() -> Any:
        yield first
        yield from chunks

    response = Response(stream_with_context(body()), mimetype="application/octet-stream")
    response.headers["Content-Length"] = str(row.bytes)
    response.headers["Content-Disposition"] = f'attachment; filename="{row.id}.jsonl"'
    return response


@bp.delete("/files/<file_id>")
def delete_file(file_id: str) -> Response:
    row = owned_file(file_id)
    session = db()
    records.delete_file(session=session, file=row)
    session.commit()  # the row first: a failed object delete leaves no dangling id
    runtime().storage.delete([row.key])
    return jsonify({"id": row.id, "object": "file", "deleted": True})
