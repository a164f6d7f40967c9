"""GET /v1/jobs/{id}/events and /v1/batches/{id}/events (server-sent events), and
`Prefer: wait` woken by the event log instead of polling the database."""

from __future__ import annotations

import base64
import io
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from service.api import waiting
from service.core.settings import Settings
from service.entry.migrate import upgrade
from tests.helpers import IDLE, TINY, assert_error_shape, make_key, png_bytes, start_worker

Event = tuple[str | None, str, Any]  # (id, name, data); comments are (None, "comment", text)


def sse_events(response) -> Iterator[Event]:  # type: ignore[no-untyped-def]
    """Parse a streamed text/event-stream response as it arrives."""
    buffer = ""
    for chunk in response.response:
        buffer += chunk.decode() if isinstance(chunk, bytes) else chunk
        while "\n\n" in buffer:
            block, buffer = buffer.split("\n\n", 1)
            fields: dict[str, str] = {}
            for line in block.split("\n"):
                if line.startswith(":"):
                    yield None, "comment", line[1:].strip()
                    continue
                name, _, value = line.partition(": ")
                fields[name] = value
            if "event" in fields:
                yield fields.get("id"), fields["event"], json.loads(fields["data"])


def collect(client, url: str, headers: dict[str, str], until: str = "completed") -> list[Event]:  # type: ignore[no-untyped-def]
    response = client.get(url, headers=headers, buffered=False)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.mimetype == "text/event-stream"
    out = []
    try:
        for event in sse_events(response):
            if event[1] != "comment":
                out.append(event)
            if event[1] == until:
                break
    finally:
        response.close()
    return out


def _later(seconds: float, fn) -> None:  # type: ignore[no-untyped-def]
    threading.Timer(seconds, fn).start()


def _without_urls(value: Any) -> Any:
    """Signed URLs carry their own expiry time; everything else must match exactly."""
    if isinstance(value, dict):
        return {k: _without_urls(v) for k, v in value.items() if k != "url"}
    if isinstance(value, list):
        return [_without_urls(v) for v in value]
    return value


def _queued_job(client, auth) -> str:  # type: ignore[no-untyped-def]
    body = {"model": IDLE, "task": "generate", "input": {"prompt": "p", "seed": 1}}
    response = client.post("/v1/jobs", json=body, headers=auth)
    assert response.status_code == 202, response.json
    return response.json["id"]


# -- a queued job, canceled: no worker needed ---------------------------------------------
def test_a_queued_job_streams_its_position_then_completed_on_cancel(client, auth) -> None:
    job_id = _queued_job(client, auth)
    _later(0.3, lambda: client.post(f"/v1/jobs/{job_id}/cancel", headers=auth))
    events = collect(client, f"/v1/jobs/{job_id}/events", auth)
    (qid, name, data), (cid, last, job) = events[0], events[-1]
    assert name == "queued" and isinstance(data["queue_position"], int) and qid == "0"
    assert last == "completed" and cid == "end"
    assert job == client.get(f"/v1/jobs/{job_id}", headers=auth).json
    assert job["status"] == "canceled"
    # Ended: `completed` at once; after `completed` there is nothing more.
    assert [e[1] for e in collect(client, f"/v1/jobs/{job_id}/events", auth)] == ["completed"]
    gone = client.get(f"/v1/jobs/{job_id}/events", headers={**auth, "Last-Event-ID": "end"})
    assert gone.status_code == 204


def test_event_streams_keep_tenancy_and_refuse_bad_ids(client, auth, settings) -> None:
    job_id = _queued_job(client, auth)
    other = {"Authorization": f"Bearer {make_key(settings, 'other')}"}
    assert_error_shape(client.get(f"/v1/jobs/{job_id}/events", headers=other), 404, "not_found")
    assert_error_shape(client.get(f"/v1/jobs/{job_id}/events"), 401, "unauthorized")
    assert_error_shape(client.get("/v1/jobs/job_nope/events", headers=auth), 404, "not_found")
    for bad in ("nope", "1-2-3", "9" * 40):
        response = client.get(f"/v1/jobs/{job_id}/events",
                              headers={**auth, "Last-Event-ID": bad})
        assert_error_shape(response, 400, "bad_last_event_id")
    client.post(f"/v1/jobs/{job_id}/cancel", headers=auth)


def test_an_idle_stream_gets_heartbeats(settings: Settings, auth) -> None:
    from service.api import create_app

    client = create_app(settings.model_copy(update={"events_heartbeat_seconds": 0.2})).test_client()
    job_id = _queued_job(client, auth)
    response = client.get(f"/v1/jobs/{job_id}/events", headers=auth, buffered=False)
    beats = 0
    for _, name, text in sse_events(response):
        if name == "comment" and text == "keep-alive":
            beats += 1
            if beats == 3:
                break
    response.close()
    client.post(f"/v1/jobs/{job_id}/cancel", headers=auth)
    assert beats == 3


def test_prefer_wait_is_woken_by_the_cancel_not_by_polling(client, auth, monkeypatch) -> None:
    checks = []
    real = waiting.job_ended
    monkeypatch.setattr(waiting, "job_ended", lambda job_id: checks.append(job_id) or real(job_id))
    job_id = _queued_job(client, auth)
    _later(0.3, lambda: client.post(f"/v1/jobs/{job_id}/cancel", headers=auth))
    response = client.get(f"/v1/jobs/{job_id}", headers={**auth, "Prefer": "wait=60"})
    assert response.json["status"] == "canceled"
    assert response.headers["Preference-Applied"] == "wait=60"
    assert checks == [job_id]  # one look at the database before waiting, none after


def test_a_batch_streams_counts_then_completed(client, auth) -> None:
    lines = "\n".join(json.dumps({"model": IDLE, "task": "generate", "custom_id": str(n),
                                  "input": {"prompt": f"p{n}", "seed": n}}) for n in range(3))
    upload = client.post("/v1/batches", headers=auth, content_type="multipart/form-data",
                         data={"file": (io.BytesIO(lines.encode()), "b.jsonl")})
    assert upload.status_code == 202, upload.json
    batch_id = upload.json["id"]
    job_ids = [j["id"] for j in client.get(f"/v1/jobs?batch_id={batch_id}", headers=auth).json[
        "data"]]
    url = f"/v1/batches/{batch_id}/events"
    response = client.get(url, headers=auth, buffered=False)
    stream = sse_events(response)
    first = next(e for e in stream if e[1] != "comment")
    assert first[1] == "counts" and first[2]["queued"] == 3 and first[2]["total"] == 3
    client.post(f"/v1/jobs/{job_ids[0]}/cancel", headers=auth)
    moved = next(e for e in stream if e[1] != "comment")
    assert moved[1] == "counts" and moved[2]["canceled"] == 1 and moved[2]["queued"] == 2
    client.post(f"/v1/batches/{batch_id}/cancel", headers=auth)
    last = next(e for e in stream if e[1] != "comment")
    response.close()
    assert last[1] == "completed" and last[0] == "end"
    assert last[2] == client.get(f"/v1/batches/{batch_id}", headers=auth).json
    assert last[2]["status"] == "canceled"
    assert [e[1] for e in collect(client, url, auth)] == ["completed"]


# -- the embedded mode: SQLite, no Redis ---------------------------------------------------
def test_streams_and_waits_work_in_the_embedded_mode(tmp_path: Path, tiny_checkpoint) -> None:
    from service.api import create_app

    settings = Settings(data_dir=tmp_path, models={IDLE: tiny_checkpoint})
    upgrade(settings.database_url)
    auth = {"Authorization": f"Bearer {make_key(settings)}"}
    client = create_app(settings).test_client()
    job_id = _queued_job(client, auth)
    _later(0.3, lambda: client.post(f"/v1/jobs/{job_id}/cancel", headers=auth))
    events = collect(client, f"/v1/jobs/{job_id}/events", auth)
    assert [e[1] for e in events] == ["queued", "completed"]
    assert events[-1][2]["status"] == "canceled"
    other = _queued_job(client, auth)
    _later(0.3, lambda: client.post(f"/v1/jobs/{other}/cancel", headers=auth))
    waited = client.get(f"/v1/jobs/{other}", headers={**auth, "Prefer": "wait=60"})
    assert waited.json["status"] == "canceled"


# -- a real worker: started, progress, tokens, resume --------------------------------------
@pytest.mark.slow
def test_a_running_job_streams_progress_and_tokens_and_resumes(
    client, auth, settings, spawn
) -> None:
    start_worker(spawn, settings)
    image = "data:image/png;base64," + base64.b64encode(png_bytes((48, 40), "blue")).decode()
    ask = {"model": TINY, "task": "understand",
           "input": {"image": image, "question": "What is in the picture?", "seed": 3,
                     "max_new_tokens": 16, "temperature": 1.0}}
    job_id = client.post("/v1/jobs", json=ask, headers=auth).json["id"]
    events = collect(client, f"/v1/jobs/{job_id}/events", auth)
    names = [e[1] for e in events]
    assert names[-1] == "completed" and "started" in names and "progress" in names
    job = client.get(f"/v1/jobs/{job_id}", headers=auth).json
    assert _without_urls(events[-1][2]) == _without_urls(job) and job["status"] == "succeeded"
    tokens = [e for e in events if e[1] == "token"]
    assert tokens and "".join(e[2]["text"] for e in tokens) == job["output"]["text"]
    logged = [e for e in events if e[1] not in ("queued", "completed")]
    assert all(e[0] for e in events) and len({e[0] for e in logged}) == len(logged)
    # Reconnecting after any event gives exactly what followed it.
    for k in (0, len(logged) // 2, len(logged) - 1):
        resumed = collect(client, f"/v1/jobs/{job_id}/events",
                          {**auth, "Last-Event-ID": logged[k][0]})
        assert [e[:2] for e in resumed[:-1]] == [e[:2] for e in logged[k + 1 :]]
        assert resumed[-1][1] == "completed"

    gen = {"model": TINY, "task": "generate", "input": {"prompt": "a fox", "seed": 1}}
    gen_id = client.post("/v1/jobs", json=gen, headers=auth).json["id"]
    progress = [e[2] for e in collect(client, f"/v1/jobs/{gen_id}/events", auth)
                if e[1] == "progress"]
    assert progress[-1]["fraction"] == 1.0 and progress[-1]["step"] == progress[-1]["steps"]
    fractions = [p["fraction"] for p in progress]
    assert fractions == sorted(fractions) and all(p["steps"] for p in progress)
