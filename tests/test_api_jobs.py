"""The jobs API against real Postgres, Redis and S3, without a worker (model IDLE)."""

from __future__ import annotations

import base64
import io
import json

import redis
from sqlalchemy import create_engine, func, select

from service.core.tables import Job
from tests.helpers import CLI, IDLE, TINY, make_key, png_bytes, queue_key


def gen_body(**input_: object) -> dict:
    return {"model": IDLE, "task": "generate", "input": {"prompt": "a red fox", **input_}}


def test_health_ready_openapi(client) -> None:
    assert client.get("/healthz").status_code == 200
    ready = client.get("/readyz")
    assert ready.status_code == 200, ready.json
    doc = client.get("/openapi.json").json
    assert doc["openapi"].startswith("3.")
    assert "/v1/jobs" in doc["paths"]
    props = doc["components"]["schemas"]["GenerateInput"]["properties"]
    assert props["num_images"]["maximum"] == 16  # generated from the validating schema


def test_submit_get_list_cancel(client, auth) -> None:
    r = client.post("/v1/jobs", json=gen_body(num_images=2, seed=7), headers=auth)
    assert r.status_code == 202, r.json
    job = r.json
    assert job["id"].startswith("job_") and job["object"] == "job"
    assert job["status"] == "queued" and job["input"]["seed"] == 7
    assert job["output"] is None and job["error"] is None and job["attempts"] == 0
    assert isinstance(job["queue_position"], int)
    assert job["metrics"] == {"queue_seconds": None, "run_seconds": None}

    got = client.get(f"/v1/jobs/{job['id']}", headers=auth)
    assert got.status_code == 200 and got.json["id"] == job["id"]

    second = client.post("/v1/jobs", json=gen_body(), headers=auth).json
    assert isinstance(second["input"]["seed"], int)  # chosen and returned
    assert second["queue_position"] == job["queue_position"] + 1

    page = client.get(f"/v1/jobs?model={IDLE}&limit=1", headers=auth).json
    assert page["data"][0]["id"] == second["id"] and page["has_more"] is True
    page2 = client.get(f"/v1/jobs?model={IDLE}&limit=1&after={page['next']}", headers=auth).json
    assert page2["data"][0]["id"] == job["id"]

    canceled = client.post(f"/v1/jobs/{job['id']}/cancel", headers=auth)
    assert canceled.status_code == 200 and canceled.json["status"] == "canceled"
    again = client.post(f"/v1/jobs/{job['id']}/cancel", headers=auth)
    assert again.json["status"] == "canceled"
    assert again.json["completed_at"] == canceled.json["completed_at"]
    client.post(f"/v1/jobs/{second['id']}/cancel", headers=auth)


def test_auth_and_isolation(client, settings, auth) -> None:
    assert client.get("/v1/jobs").status_code == 401
    r = client.get("/v1/jobs", headers={"Authorization": "Bearer nope"})
    assert r.status_code == 401 and r.json["error"]["code"] == "unauthorized"
    job = client.post("/v1/jobs", json=gen_body(), headers=auth).json
    other = {"Authorization": f"Bearer {make_key(settings, 'b')}"}
    assert client.get(f"/v1/jobs/{job['id']}", headers=other).status_code == 404
    r = client.post(f"/v1/jobs/{job['id']}/cancel", headers=other)
    assert r.status_code == 404 and r.json["error"]["code"] == "not_found"
    assert job["id"] not in [j["id"] for j in client.get("/v1/jobs", headers=other).json["data"]]
    assert client.get(f"/v1/jobs/{job['id']}", headers=auth).json["status"] == "queued"
    client.post(f"/v1/jobs/{job['id']}/cancel", headers=auth)


def test_idempotency(client, settings, auth) -> None:
    engine = create_engine(settings.database_url)
    headers = {**auth, "Idempotency-Key": "idem-1"}
    first = client.post("/v1/jobs", json=gen_body(seed=1), headers=headers)
    assert first.status_code == 202
    repeat = client.post("/v1/jobs", json=gen_body(seed=1), headers=headers)
    assert repeat.status_code == 200 and repeat.json["id"] == first.json["id"]
    with engine.connect() as conn:
        n = conn.scalar(
            select(func.count()).select_from(Job).where(Job.idempotency_key == "idem-1")
        )
    assert n == 1
    conflict = client.post("/v1/jobs", json=gen_body(seed=2), headers=headers)
    assert conflict.status_code == 409 and conflict.json["error"]["code"] == "idempotency_conflict"
    client.post(f"/v1/jobs/{first.json['id']}/cancel", headers=auth)


def test_understand_image_stored_before_enqueue(client, app, auth) -> None:
    body = {
        "model": IDLE,
        "task": "understand",
        "input": {
            "image": "data:image/png;base64," + base64.b64encode(png_bytes()).decode(),
            "question": "what is this?",
        },
    }
    r = client.post("/v1/jobs", json=body, headers=auth)
    assert r.status_code == 202, r.json
    image = r.json["input"]["image"]
    assert image["content_type"] == "image/png" and image["width"] == 32
    storage = app.extensions["janus"].storage
    assert storage.get(f"inputs/{r.json['id']}/image.png") == png_bytes()

    # multipart form of the same job
    files = {
        "image": (io.BytesIO(png_bytes()), "x.png", "image/png"),
        "job": json.dumps({"model": IDLE, "task": "understand", "input": {"question": "hi"}}),
    }
    m = client.post("/v1/jobs", data=files, headers=auth, content_type="multipart/form-data")
    assert m.status_code == 202, m.json
    assert m.json["input"]["question"] == "hi"
    for job in (r.json, m.json):
        client.post(f"/v1/jobs/{job['id']}/cancel", headers=auth)


def test_a_conversation_is_stored_with_the_image_turn_named(client, auth) -> None:
    messages = [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hello"},
                {"role": "assistant", "content": "Hi."},
                {"role": "user", "content": "What is this?"}]
    body = {"model": IDLE, "task": "understand",
            "input": {"image": base64.b64encode(png_bytes()).decode(), "messages": messages}}
    r = client.post("/v1/jobs", json=body, headers=auth)
    assert r.status_code == 202, r.json
    # Unflagged, the image goes to the first user message, and the job says so.
    assert r.json["input"]["messages"] == [
        {**m, "image": i == 1} for i, m in enumerate(messages)]
    assert "question" not in r.json["input"]
    flagged = [{"role": "user", "content": ""}, {"role": "assistant", "content": "?"},
               {"role": "user", "content": "this", "image": True}]
    files = {"image": (io.BytesIO(png_bytes()), "x.png", "image/png"),
             "job": json.dumps({"model": IDLE, "task": "understand",
                                "input": {"messages": flagged[2:]}})}
    m = client.post("/v1/jobs", data=files, headers=auth, content_type="multipart/form-data")
    assert m.status_code == 202, m.json
    assert m.json["input"]["messages"] == flagged[2:]
    refused = client.post("/v1/jobs", headers=auth, json={
        **body, "input": {**body["input"], "messages": flagged}})
    assert refused.status_code == 422  # a blank user message without the image
    for job in (r.json, m.json):
        client.post(f"/v1/jobs/{job['id']}/cancel", headers=auth)


def test_models_endpoint(client, auth) -> None:
    data = client.get("/v1/models", headers=auth).json["data"]
    ids = {m["id"]: m for m in data}
    assert {TINY, IDLE} <= set(ids)
    assert ids[IDLE]["tasks"] == ["understand", "generate"]
    assert ids[IDLE]["workers"] == 0
    assert {"queued", "running"} <= set(ids[IDLE])
    assert ids[IDLE]["defaults"]["generate"]["guidance"] == 5.0


def test_metrics(client, auth) -> None:
    client.get("/v1/jobs", headers=auth)
    text = client.get("/metrics").get_data(as_text=True)
    assert "janus_http_requests_total" in text
    assert f'janus_jobs{{model="{IDLE}",status="canceled"}}' in text


def test_publish_lands_in_redis(client, settings, auth) -> None:
    r = redis.Redis.from_url(settings.broker_url)
    before = r.llen(queue_key(settings, IDLE))
    job = client.post("/v1/jobs", json=gen_body(), headers=auth).json
    assert r.llen(queue_key(settings, IDLE)) == before + 1
    client.post(f"/v1/jobs/{job['id']}/cancel", headers=auth)


def test_openapi_is_valid_and_covers_every_route(client, app) -> None:
    from openapi_spec_validator import validate

    doc = client.get("/openapi.json").json
    validate(doc)
    documented = {path for path in doc["paths"]}
    for rule in app.url_map.iter_rules():
        if rule.endpoint in ("static", "files.read_file", "console.asset") or (
                rule.rule.startswith("/boom")):
            continue
        path = rule.rule.replace("<", "{").replace(">", "}")
        assert path in documented, f"{path} is served but not in /openapi.json"


def test_keys_cli_create_list_revoke(client, settings) -> None:
    import subprocess

    from tests.helpers import settings_env

    env = settings_env(settings)
    cli = [*CLI, "keys"]
    created = json.loads(subprocess.run([*cli, "create", "--name", "to-revoke", "--json"],
                                        env=env, capture_output=True, text=True,
                                        check=True).stdout)
    listed = json.loads(subprocess.run([*cli, "list", "--json"], env=env, capture_output=True,
                                       text=True, check=True).stdout)
    mine = [k for k in listed if k["name"] == "to-revoke"]
    assert len(mine) == 1 and mine[0]["revoked_at"] is None
    assert created["key"].startswith(mine[0]["prefix"])
    revoked = subprocess.run([*cli, "revoke", "--key-id", mine[0]["id"]], env=env,
                             capture_output=True, text=True)
    assert revoked.returncode == 0, revoked.stderr
    r = client.get("/v1/jobs", headers={"Authorization": f"Bearer {created['key']}"})
    assert r.status_code == 401
    again = subprocess.run([*cli, "revoke", "--key-id", mine[0]["id"]], env=env,
                           capture_output=True, text=True)
    assert again.returncode != 0 and "no active key" in again.stderr


def test_idempotency_race_replays_the_job_that_won(client, app, auth, monkeypatch) -> None:
    """A concurrent submit with the same key commits between our lookup and our INSERT:
    the INSERT fails on the unique key (an IntegrityError, though it goes straight to the
    driver) and the winner is replayed; nothing is counted twice in the queue."""
    from service.api.parsing.submit import canonical_hash
    from service.core.tables import QueueCount
    from service.lifecycle import jobs as crud

    def counted() -> int:
        with app.extensions["janus"].sessions() as session:
            return session.scalar(select(func.coalesce(func.sum(QueueCount.n), 0)).where(
                QueueCount.model == IDLE, QueueCount.lane == 0))

    before = counted()
    body = gen_body(seed=3)
    real = crud.find_by_idempotency_key
    won: dict = {}

    def lookup_then_lose(*, session, api_key_id, key):  # type: ignore[no-untyped-def]
        if not won:  # the first lookup misses; the other request commits right after it
            spec = crud.JobSpec(model=IDLE, task="generate", input=dict(body["input"]))
            won["job"], _ = crud.create_job(
                db=app.extensions["janus"].db, storage=app.extensions["janus"].storage,
                api_key_id=api_key_id, spec=spec, idempotency_key=key,
                request_hash=canonical_hash(body, None))
            return None
        return real(session=session, api_key_id=api_key_id, key=key)

    monkeypatch.setattr(crud, "find_by_idempotency_key", lookup_then_lose)
    r = client.post("/v1/jobs", json=body, headers={**auth, "Idempotency-Key": "race-1"})
    assert r.status_code == 200 and r.json["id"] == won["job"].id
    assert counted() == before + 1  # the winner only: the failed statement counted nothing
    client.post(f"/v1/jobs/{won['job'].id}/cancel", headers=auth)
