"""Retention and DELETE: finished jobs lose their stored data, keep their fields.

On real S3 (moto) with a worker producing real outputs, and on local-disk storage.
The sweeps are called directly, with a one-second retention.
"""

from __future__ import annotations

import base64
import io
import json
import os
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import boto3
import psycopg
import pytest
from sqlalchemy import update

from service.api import create_app
from service.core.broker import make_celery
from service.core.db import make_db, make_sessionmaker, session_scope
from service.core.settings import Settings
from service.core.storage import storage_from_settings
from service.core.tables import Job, utcnow
from service.entry.migrate import upgrade
from service.lifecycle import retention
from service.workers.sweeper import sweep_once
from tests.helpers import (
    IDLE,
    TINY,
    free_port,
    make_key,
    png_bytes,
    settings_env,
    start_worker,
    wait_for,
    wait_terminal,
)

PG_ADMIN = os.environ.get("TEST_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


@pytest.fixture(scope="module")
def own(settings: Settings) -> Iterator[Settings]:
    """A database of this module's own: a one-second retention sweeps every finished job
    in it, and other modules' jobs must keep their data."""
    name = f"janus_retention_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = PG_ADMIN.rsplit("/", 1)[0] + f"/{name}"
    upgrade(Settings(database_url=url).database_url)
    yield settings.model_copy(update={"database_url": Settings(database_url=url).database_url})
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module")
def auth(own: Settings) -> dict[str, str]:
    return {"Authorization": f"Bearer {make_key(own, 'retention')}"}


def _image() -> str:
    return "data:image/png;base64," + base64.b64encode(png_bytes((40, 32), "green")).decode()


def _understand(model: str) -> dict:
    return {"model": model, "task": "understand",
            "input": {"image": _image(), "question": "what?", "max_new_tokens": 4}}


def _urls(obj: object) -> list[str]:
    """Every `url` field anywhere in a JSON value."""
    if isinstance(obj, dict):
        return [v for k, v in obj.items() if k == "url"] + [
            u for v in obj.values() for u in _urls(v)]
    if isinstance(obj, list):
        return [u for v in obj for u in _urls(v)]
    return []


def _sweeper(settings: Settings):  # type: ignore[no-untyped-def]
    sessions = make_sessionmaker(make_db(settings.database_url))
    celery = make_celery(settings)
    storage = storage_from_settings(settings)

    def sweep(retention_seconds: int) -> list[str]:
        own = settings.model_copy(update={"retention_seconds": retention_seconds})
        return sweep_once(sessions=sessions, celery=celery, settings=own,
                          storage=storage).data_removed
    return sweep, sessions


def _removed_by_sweeps(sweep, ids: set[str]) -> None:  # type: ignore[no-untyped-def]
    removed: set[str] = set()

    def all_removed() -> bool:
        removed.update(sweep(1))
        return ids <= removed

    wait_for(all_removed, 30, interval=0.3, what="the retention sweep")


@pytest.mark.slow
def test_retention_on_s3_removes_outputs_inputs_and_batch_results(own, auth, spawn) -> None:
    settings = own
    api = create_app(settings).test_client()
    start_worker(spawn, settings, env=settings_env(settings), name="retention-worker")
    gen = api.post("/v1/jobs", json={"model": TINY, "task": "generate",
                                     "input": {"prompt": "kept a while", "num_images": 2}},
                   headers=auth).json
    ask = api.post("/v1/jobs", json=_understand(TINY), headers=auth).json
    lines = "".join(json.dumps({"custom_id": f"r{i}", "model": TINY, "task": "generate",
                                "input": {"prompt": f"line {i}"}}) + "\n" for i in range(2))
    batch = api.post("/v1/batches", data={"file": (io.BytesIO(lines.encode()), "b.jsonl")},
                     headers=auth, content_type="multipart/form-data").json
    done = {job_id: wait_terminal(api, auth, job_id) for job_id in (gen["id"], ask["id"])}
    assert all(job["status"] == "succeeded" for job in done.values()), done
    wait_for(lambda: api.get(f"/v1/batches/{batch['id']}", headers=auth).json["status"]
             == "completed", 120, what="the batch")
    batch_jobs = api.get(f"/v1/jobs?batch_id={batch['id']}", headers=auth).json["data"]
    ids = {gen["id"], ask["id"], *(j["id"] for j in batch_jobs)}

    s3 = boto3.client("s3", endpoint_url=settings.s3_endpoint_url)
    bucket = settings.storage_url.split("/")[2]

    def objects(job_id: str) -> list[str]:
        found = []
        for prefix in (f"t/jobs/{job_id}/", f"t/inputs/{job_id}/"):
            found += [o["Key"] for o in s3.list_objects_v2(
                Bucket=bucket, Prefix=prefix).get("Contents", [])]
        return found

    assert all(objects(job_id) for job_id in ids)
    assert len(_urls(done[gen["id"]])) == 2 and len(_urls(done[ask["id"]])) == 1
    assert done[gen["id"]]["data_removed"] is False
    assert done[gen["id"]]["data_removed_at"] is None

    sweep, _ = _sweeper(settings)
    assert not ids & set(sweep(3600))  # not expired yet: nothing of ours removed
    assert all(objects(job_id) for job_id in ids)
    _removed_by_sweeps(sweep, ids)

    assert [objects(job_id) for job_id in ids] == [[] for _ in ids]
    for job_id in ids:
        job = api.get(f"/v1/jobs/{job_id}", headers=auth).json
        assert job["status"] == "succeeded" and job["data_removed"] is True, job
        assert job["data_removed_at"] and _urls(job) == [], job
        assert job["output"]["data_removed"] is True
        assert job["output"]["data_removed_at"] == job["data_removed_at"]
    kept = api.get(f"/v1/jobs/{gen['id']}", headers=auth).json
    assert kept["output"]["images"] == [{"width": 64, "height": 64,
                                         "content_type": "image/png"}] * 2
    assert kept["input"]["prompt"] == "kept a while"
    asked = api.get(f"/v1/jobs/{ask['id']}", headers=auth).json
    assert asked["input"]["image"]["width"] == 40 and "url" not in asked["input"]["image"]
    assert asked["output"]["text"] == done[ask["id"]]["output"]["text"]

    results = [json.loads(line) for line in api.get(
        f"/v1/batches/{batch['id']}/results", headers=auth).get_data(as_text=True).splitlines()]
    assert [r["custom_id"] for r in results] == ["r0", "r1"]
    assert all(r["data_removed"] is True and r["data_removed_at"] for r in results)
    assert _urls(results) == []
    assert not ids & set(sweep(1))  # each job is removed once


def _local(settings: Settings, tmp_path: Path) -> Settings:
    return settings.model_copy(update={"storage_url": f"file://{tmp_path / 'storage'}",
                                       "public_url": "http://localhost"})


def test_delete_on_local_storage(own, auth, tmp_path) -> None:
    settings = own
    local = _local(settings, tmp_path)
    api = create_app(local).test_client()
    job = api.post("/v1/jobs", json=_understand(IDLE), headers=auth).json
    path = tmp_path / "storage" / "inputs" / job["id"]
    assert [p.name for p in path.iterdir()] == ["image.png"]

    refused = api.delete(f"/v1/jobs/{job['id']}", headers=auth)
    assert refused.status_code == 409 and refused.json["error"]["code"] == "job_not_finished"
    assert path.is_dir()
    sessions = make_sessionmaker(make_db(settings.database_url))
    with session_scope(sessions) as session:  # as if a worker had claimed it
        session.execute(update(Job).where(Job.id == job["id"]).values(
            status="running", worker_id="w@h:1", attempts=1, started_at=utcnow()))
    assert api.delete(f"/v1/jobs/{job['id']}", headers=auth).status_code == 409
    with session_scope(sessions) as session:  # ... and had answered
        session.execute(update(Job).where(Job.id == job["id"]).values(
            status="succeeded", output={"text": "a square", "seed": 1},
            completed_at=utcnow()))
    url = api.get(f"/v1/jobs/{job['id']}", headers=auth).json["input"]["image"]["url"]
    file_path = url.removeprefix("http://localhost")
    assert api.get(file_path).status_code == 200

    deleted = api.delete(f"/v1/jobs/{job['id']}", headers=auth)
    assert deleted.status_code == 200, deleted.json
    body = deleted.json
    assert body["data_removed"] is True and body["status"] == "succeeded"
    assert _urls(body) == [] and body["input"]["image"]["content_type"] == "image/png"
    assert body["output"]["text"] == "a square" and body["output"]["data_removed"] is True
    assert not path.exists()  # the file and its now empty folder
    assert api.get(file_path).status_code == 404  # an old URL no longer serves it
    again = api.delete(f"/v1/jobs/{job['id']}", headers=auth)
    assert again.status_code == 200 and again.json == body  # idempotent
    assert api.get(f"/v1/jobs/{job['id']}", headers=auth).json == body

    other = {"Authorization": f"Bearer {make_key(settings, 'stranger')}"}
    assert api.delete(f"/v1/jobs/{job['id']}", headers=other).status_code == 404


def test_retention_sweep_on_local_storage_in_bounded_passes(own, auth, tmp_path,
                                                            monkeypatch) -> None:
    settings = own
    local = _local(settings, tmp_path)
    api = create_app(local).test_client()
    jobs = [api.post("/v1/jobs", json=_understand(IDLE), headers=auth).json for _ in range(3)]
    for job in jobs:
        assert api.post(f"/v1/jobs/{job['id']}/cancel", headers=auth).json["status"] == "canceled"
    ids = {job["id"] for job in jobs}
    sessions = make_sessionmaker(make_db(settings.database_url))
    storage = storage_from_settings(local)
    with session_scope(sessions) as session:  # finished long ago: older than anyone else's
        session.execute(update(Job).where(Job.id.in_(ids)).values(
            completed_at=utcnow() - timedelta(days=3650)))
    monkeypatch.setattr(retention, "BATCH", 2)
    with session_scope(sessions) as session:
        first = retention.expire_data(session=session, storage=storage, now=utcnow(),
                                      retention_seconds=3600)
    assert len(first) == 2 and set(first) <= ids  # one bounded pass, oldest first
    with session_scope(sessions) as session:
        assert retention.expire_data(session=session, storage=storage, now=utcnow(),
                                     retention_seconds=0) == []  # 0 keeps data forever
    sweep, _ = _sweeper(local)
    monkeypatch.setattr(retention, "BATCH", 200)
    _removed_by_sweeps(sweep, ids - set(first))
    assert not (tmp_path / "storage" / "inputs").exists() or not any(
        (tmp_path / "storage" / "inputs" / job_id).exists() for job_id in ids)
    for job in jobs:
        after = api.get(f"/v1/jobs/{job['id']}", headers=auth).json
        assert after["data_removed"] is True and after["status"] == "canceled"
        assert after["output"] is None and _urls(after) == []


def test_s3_delete_is_batched_and_tolerates_missing_keys(settings) -> None:
    storage = storage_from_settings(settings)
    keys = [f"retention-unit/{n}.bin" for n in range(1005)]  # more than one request's worth
    for key in keys[:3] + keys[-2:]:
        storage.put(key, b"x", "application/octet-stream")
    storage.delete(keys)
    assert storage.list("retention-unit/") == []


def test_delete_with_storage_away_is_a_503_and_marks_nothing(own, auth) -> None:
    api = create_app(own).test_client()
    job = api.post("/v1/jobs", json=_understand(IDLE), headers=auth).json
    api.post(f"/v1/jobs/{job['id']}/cancel", headers=auth)
    away = create_app(own.model_copy(update={
        "s3_endpoint_url": f"http://127.0.0.1:{free_port()}"})).test_client()
    refused = away.delete(f"/v1/jobs/{job['id']}", headers=auth)
    assert refused.status_code == 503, refused.json
    assert refused.json["error"]["code"] == "storage_unavailable"
    assert refused.headers["Retry-After"]
    kept = api.get(f"/v1/jobs/{job['id']}", headers=auth).json
    assert kept["data_removed"] is False and len(_urls(kept)) == 1
    assert api.delete(f"/v1/jobs/{job['id']}", headers=auth).json["data_removed"] is True
