"""Bulk uploads: validation of every line, atomic storage, progress, results, cancel, fairness."""

from __future__ import annotations

import base64
import io
import json
import time

import pytest
import redis
from sqlalchemy import create_engine, func, select

from service.core.tables import Batch, Job
from tests.helpers import CLI, IDLE, TINY, png_bytes, queue_key, start_worker, wait_for


def upload(client, auth, content: str | bytes, name: str = "jobs.jsonl", **parts):  # type: ignore[no-untyped-def]
    data = content.encode() if isinstance(content, str) else content
    form = {"file": (io.BytesIO(data), name), **parts}
    return client.post("/v1/batches", data=form, headers=auth, content_type="multipart/form-data")


def jsonl(lines: list[dict]) -> str:
    return "\n".join(json.dumps(line) for line in lines) + "\n"


@pytest.fixture()
def counts(settings):  # type: ignore[no-untyped-def]
    engine = create_engine(settings.database_url)
    queue = redis.Redis.from_url(settings.broker_url)

    def snapshot() -> tuple[int, int, int]:
        with engine.connect() as conn:
            jobs = conn.scalar(select(func.count()).select_from(Job))
            batches = conn.scalar(select(func.count()).select_from(Batch))
        return jobs, batches, queue.llen(queue_key(settings, IDLE))

    yield snapshot
    engine.dispose()


def test_jsonl_and_csv_accepted_with_defaults(client, auth, counts) -> None:
    before = counts()
    lines = [{"custom_id": f"c{i}", "input": {"prompt": f"fox {i}"}} for i in range(5)]
    r = upload(client, auth, jsonl(lines),
               defaults=json.dumps({"model": IDLE, "task": "generate",
                                    "input": {"num_images": 2}}),
               metadata=json.dumps({"project": "x"}))
    assert r.status_code == 202, r.json
    batch = r.json
    assert batch["object"] == "batch" and batch["id"].startswith("batch_")
    assert batch["counts"] == {"total": 5, "queued": 5, "running": 0, "succeeded": 0,
                               "failed": 0, "canceled": 0}
    assert batch["status"] == "queued" and batch["metadata"] == {"project": "x"}
    jobs = client.get(f"/v1/jobs?batch_id={batch['id']}&limit=100", headers=auth).json["data"]
    assert sorted(j["custom_id"] for j in jobs) == [f"c{i}" for i in range(5)]
    assert all(j["input"]["num_images"] == 2 and j["batch_id"] == batch["id"] for j in jobs)
    jobs_after, batches_after, queued_after = counts()
    assert (jobs_after, batches_after) == (before[0] + 5, before[1] + 1)
    assert queued_after - before[2] <= 5  # wake-ups, not necessarily one per line

    csv_text = ("custom_id,prompt,num_images,seed,metadata.tag\n"
                "a,red fox,1,7,t1\nb,\"blue, fox\",2,,t2\n")
    c = upload(client, auth, csv_text, name="jobs.csv", defaults=json.dumps({"model": IDLE}))
    assert c.status_code == 202, c.json
    results = client.get(f"/v1/batches/{c.json['id']}/results", headers=auth)
    assert results.mimetype == "application/x-ndjson"
    rows = [json.loads(line) for line in results.get_data(as_text=True).splitlines()]
    assert [r["custom_id"] for r in rows] == ["a", "b"]
    assert {r["status"] for r in rows} == {"queued"}
    job_b = client.get(f"/v1/jobs/{rows[1]['job_id']}", headers=auth).json
    assert job_b["input"]["prompt"] == "blue, fox" and job_b["metadata"] == {"tag": "t2"}
    for b in (batch, c.json):
        assert client.post(f"/v1/batches/{b['id']}/cancel", headers=auth).json["status"] == (
            "canceled")


BAD_LINES = [
    ("not json", "{not json"),
    ("array line", "[1, 2]"),
    ("unknown model", json.dumps({"model": "nope", "task": "generate", "input": {"prompt": "x"}})),
    ("missing prompt", json.dumps({"model": IDLE, "task": "generate", "input": {}})),
    ("num_images too big", json.dumps({"model": IDLE, "task": "generate",
                                       "input": {"prompt": "x", "num_images": 99}})),
    ("unknown field", json.dumps({"model": IDLE, "task": "generate", "color": "red",
                                  "input": {"prompt": "x"}})),
    ("bad task", json.dumps({"model": IDLE, "task": "paint", "input": {"prompt": "x"}})),
    ("bad image", json.dumps({"model": IDLE, "task": "understand",
                              "input": {"image": "!!", "question": "q"}})),
    ("custom_id not string", json.dumps({"custom_id": 5, "model": IDLE, "task": "generate",
                                         "input": {"prompt": "x"}})),
    ("duplicate custom_id", json.dumps({"custom_id": "dup", "model": IDLE, "task": "generate",
                                        "input": {"prompt": "x"}})),
    ("steps on janus-pro", json.dumps({"model": IDLE, "task": "generate",
                                       "input": {"prompt": "x", "steps": 3}})),
    ("blank prompt", json.dumps({"model": IDLE, "task": "generate", "input": {"prompt": " "}})),
]


def test_every_bad_line_is_listed_and_nothing_is_created(client, auth, counts) -> None:
    good = json.dumps({"custom_id": "dup", "model": IDLE, "task": "generate",
                       "input": {"prompt": "ok"}})
    content = "\n".join([good] + [line for _, line in BAD_LINES] + [good.replace("dup", "z")])
    before = counts()
    r = upload(client, auth, content)
    assert r.status_code == 422, r.json
    error = r.json["error"]
    assert error["code"] == "validation_error"
    bad = sorted({d["line"] for d in error["details"]})
    assert bad == list(range(2, 2 + len(BAD_LINES)))  # 1-based; the good lines are 1 and last
    assert all({"line", "field", "message"} <= set(d) for d in error["details"])
    assert counts() == before


@pytest.mark.parametrize(("name", "content", "status", "code"), [
    ("csv unknown column", ("prompt,colour\nx,red\n", "a.csv"), 422, "validation_error"),
    ("csv bad number", ("prompt,num_images\nx,two\n", "a.csv"), 422, "validation_error"),
    ("csv ragged row", ("prompt,seed\nx,1,2\n", "a.csv"), 422, "validation_error"),
    ("empty file", ("", "a.jsonl"), 422, "validation_error"),
    ("not utf-8", (b"\xff\xfe\x00bad", "a.jsonl"), 422, "validation_error"),
])
def test_bad_files(client, auth, counts, name, content, status, code) -> None:
    before = counts()
    r = upload(client, auth, content[0], name=content[1], defaults=json.dumps({"model": IDLE}))
    assert r.status_code == status, r.json
    assert r.json["error"]["code"] == code
    if content[1].endswith(".csv") and name != "csv bad number":
        assert r.json["error"]["details"][0]["line"] in (1, 2)
    assert counts() == before


def test_limits_and_request_shape(client, auth, settings, counts) -> None:
    from service.api import create_app

    small = create_app(settings.model_copy(update={"batch_max_lines": 3,
                                                   "batch_max_bytes": 2048})).test_client()
    before = counts()
    four = jsonl([{"model": IDLE, "task": "generate", "input": {"prompt": "x"}}] * 4)
    assert upload(small, auth, four).status_code == 413
    big = jsonl([{"model": IDLE, "task": "generate", "input": {"prompt": "x" * 1000}}] * 3)
    r = upload(small, auth, big)
    assert r.status_code == 413 and r.json["error"]["code"] == "body_too_large"
    assert client.post("/v1/batches", json={"file": "x"}, headers=auth).status_code == 415
    r = upload(client, auth, four, defaults="{bad")
    assert r.status_code == 422 and r.json["error"]["details"][0]["field"] == "defaults"
    assert counts() == before
    assert client.get("/v1/batches/batch_nope", headers=auth).status_code == 404


def test_ten_thousand_lines_accepted(client, auth, settings) -> None:
    content = jsonl([{"custom_id": str(i), "input": {"prompt": f"prompt {i}", "seed": i}}
                     for i in range(10_000)])
    started = time.monotonic()
    r = upload(client, auth, content, defaults=json.dumps({"model": IDLE, "task": "generate"}))
    elapsed = time.monotonic() - started
    assert r.status_code == 202, r.json
    assert r.json["counts"]["total"] == 10_000
    print(f"10,000-line upload accepted in {elapsed:.2f}s")  # measured in bench/, not asserted
    page = client.get("/v1/batches?limit=1", headers=auth).json
    assert page["data"][0]["id"] == r.json["id"]
    canceled = client.post(f"/v1/batches/{r.json['id']}/cancel", headers=auth).json
    assert canceled["status"] == "canceled" and canceled["counts"]["canceled"] == 10_000


@pytest.mark.slow
def test_batches_run_end_to_end_and_interactive_jobs_jump_the_queue(
    client, auth, settings, spawn
) -> None:
    image = base64.b64encode(png_bytes()).decode()
    lines = [{"custom_id": f"g{i}", "model": TINY, "task": "generate",
              "input": {"prompt": f"p{i}", "seed": i}} for i in range(50)]
    csv_rows = "\n".join(f"c{i},red fox {i},{i}" for i in range(50))
    start_worker(spawn, settings, max_batch=4)
    j = upload(client, auth, jsonl(lines)).json
    c = upload(client, auth, "custom_id,prompt,seed\n" + csv_rows + "\n", name="x.csv",
               defaults=json.dumps({"model": TINY})).json
    u = upload(client, auth, jsonl([{"custom_id": "u", "model": TINY, "task": "understand",
                                     "input": {"image": image, "question": "?",
                                               "max_new_tokens": 4}}])).json
    interactive = client.post("/v1/jobs", headers=auth, json={
        "model": TINY, "task": "generate", "input": {"prompt": "me first", "seed": 1}}).json

    def done(batch_id: str) -> dict:
        b = client.get(f"/v1/batches/{batch_id}", headers=auth).json
        return b if b["status"] == "completed" else {}

    for batch in (j, c, u):
        final = wait_for(lambda b=batch: done(b["id"]), 300, interval=1, what="batch")
        assert final["counts"]["succeeded"] == final["counts"]["total"], final
        assert final["completed_at"]
    rows = [json.loads(x) for x in client.get(f"/v1/batches/{j['id']}/results",
                                              headers=auth).get_data(as_text=True).splitlines()]
    assert [r["custom_id"] for r in rows] == [f"g{i}" for i in range(50)]
    for row in rows[:3]:
        job = client.get(f"/v1/jobs/{row['job_id']}", headers=auth).json
        assert row["output"]["seed"] == job["output"]["seed"] and row["status"] == "succeeded"

    # Fairness: the interactive job, submitted after 101 bulk jobs, did not wait for them.
    engine = create_engine(settings.database_url)
    with engine.connect() as conn:
        me = conn.scalar(select(Job.started_at).where(Job.id == interactive["id"]))
        last_bulk = conn.scalar(select(func.max(Job.started_at)).where(
            Job.batch_id.in_([j["id"], c["id"]])))
    assert me < last_bulk
    engine.dispose()


@pytest.mark.slow
def test_cancel_mid_run(client, auth, settings, spawn) -> None:
    lines = [{"model": TINY, "task": "generate", "input": {"prompt": f"p{i}", "seed": i}}
             for i in range(40)]
    batch = upload(client, auth, jsonl(lines)).json
    start_worker(spawn, settings, max_batch=2)

    def some_done() -> bool:
        counts = client.get(f"/v1/batches/{batch['id']}", headers=auth).json["counts"]
        return counts["succeeded"] >= 2

    wait_for(some_done, 120, what="first results")
    r = client.post(f"/v1/batches/{batch['id']}/cancel", headers=auth).json
    assert r["status"] in ("canceling", "canceled")
    final = wait_for(lambda: (b := client.get(f"/v1/batches/{batch['id']}",
                                              headers=auth).json)["status"] == "canceled" and b,
                     60, what="batch canceled")
    counts = final["counts"]
    assert counts["canceled"] > 0 and counts["succeeded"] >= 2
    assert counts["queued"] == counts["running"] == 0
    assert counts["succeeded"] + counts["failed"] + counts["canceled"] == 40
    engine = create_engine(settings.database_url)
    with engine.connect() as conn:
        ran = conn.scalar(select(func.count()).select_from(Job).where(
            Job.batch_id == batch["id"], Job.status == "canceled", Job.started_at.is_not(None)))
    assert ran <= 2  # at most the jobs that were running when the cancel came
    engine.dispose()


def test_cli_submit_and_results(tmp_path, settings, spawn, api_key) -> None:
    import subprocess

    import requests

    from tests.helpers import free_port, settings_env

    port = free_port()
    env = settings_env(settings)
    api = spawn(["api", "--port", str(port), "--workers", "1"], env=env, name="api")
    base = f"http://127.0.0.1:{port}"

    def up() -> bool:
        assert api.alive(), api.output()
        try:
            return requests.get(f"{base}/healthz", timeout=1).ok
        except requests.RequestException:  # not listening yet, or too busy starting
            return False

    wait_for(up, 60, what="api")
    src = tmp_path / "jobs.csv"
    src.write_text("custom_id,prompt\nfirst,a fox\nsecond,a cat\n")
    cli = [*CLI, "batch"]
    client_env = {**env, "JANUS_API_URL": base, "JANUS_API_KEY": api_key}
    out = subprocess.run([*cli, "submit", str(src), "--model", IDLE], env=client_env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    batch_id = out.stdout.strip()
    assert batch_id.startswith("batch_")
    auth = {"Authorization": f"Bearer {api_key}"}
    requests.post(f"{base}/v1/batches/{batch_id}/cancel", headers=auth, timeout=10)
    dest = tmp_path / "out.jsonl"
    got = subprocess.run([*cli, "results", batch_id, "-o", str(dest)], env=client_env,
                         capture_output=True, text=True, timeout=60)
    assert got.returncode == 0, got.stderr
    rows = [json.loads(line) for line in dest.read_text().splitlines()]
    assert [r["custom_id"] for r in rows] == ["first", "second"]
    assert {r["status"] for r in rows} == {"canceled"}

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"model": "nope", "task": "generate", "input": {"prompt": "x"}}\n')
    refused = subprocess.run([*cli, "submit", str(bad)], env=client_env, capture_output=True,
                             text=True, timeout=60)
    assert refused.returncode == 2 and "line 1" in refused.stderr


def test_batch_webhook_gets_one_completed_event_and_metrics_show_it(settings, auth) -> None:
    from service.api import create_app

    app = create_app(settings.model_copy(update={"webhook_allowlist": ["127.0.0.1"]}))
    api = app.test_client()
    lines = [{"model": IDLE, "task": "generate", "input": {"prompt": f"p{i}"}} for i in range(3)]
    batch = upload(api, auth, jsonl(lines), webhook="http://127.0.0.1:9/hooks").json
    assert batch["webhook"] == "http://127.0.0.1:9/hooks"
    api.post(f"/v1/batches/{batch['id']}/cancel", headers=auth)
    api.post(f"/v1/batches/{batch['id']}/cancel", headers=auth)  # twice: still one event
    engine = create_engine(settings.database_url)
    from service.core.tables import WebhookEvent

    with engine.connect() as conn:
        events = conn.execute(select(WebhookEvent.type, WebhookEvent.payload).where(
            WebhookEvent.batch_id == batch["id"])).all()
    engine.dispose()
    assert [e.type for e in events] == ["batch.completed"]
    data = events[0].payload["data"]
    assert data["id"] == batch["id"] and data["status"] == "canceled"
    assert data["counts"]["canceled"] == 3
    text = api.get("/metrics").get_data(as_text=True)
    assert 'janus_webhook_events{status="pending",type="batch.completed"}' in text
