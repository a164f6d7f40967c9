"""End to end: API -> Postgres -> Redis -> a real `janus-service worker` -> S3 -> API."""

from __future__ import annotations

import base64
import time

import pytest
import redis
from sqlalchemy import create_engine, select

from service.core.broker import publish
from service.core.tables import Job
from tests.helpers import (
    CLI,
    TEST_IMAGE_SIZE,
    TINY,
    fetch_png,
    png_bytes,
    queue_key,
    start_worker,
    wait_for,
    wait_terminal,
)

pytestmark = pytest.mark.slow


def test_generate_understand_and_seeds(client, auth, settings, spawn) -> None:
    start_worker(spawn, settings)
    body = {"model": TINY, "task": "generate",
            "input": {"prompt": "a red fox in snow", "num_images": 2, "seed": 7}}
    first = client.post("/v1/jobs", json=body, headers=auth).json
    second = client.post("/v1/jobs", json=body, headers=auth).json
    other = client.post("/v1/jobs", json={**body, "input": {**body["input"], "seed": 8}},
                        headers=auth).json

    done = wait_terminal(client, auth, first["id"])
    assert done["status"] == "succeeded", done
    assert done["attempts"] == 1 and done["output"]["seed"] == 7
    assert done["metrics"]["run_seconds"] > 0 and done["metrics"]["queue_seconds"] >= 0
    assert done["started_at"] and done["completed_at"]
    images = done["output"]["images"]
    assert len(images) == 2
    pixels = []
    for meta in images:
        img = fetch_png(meta["url"])
        assert (img.width, img.height) == (meta["width"], meta["height"])
        assert meta["width"] == TEST_IMAGE_SIZE and meta["content_type"] == "image/png"
        pixels.append(img.tobytes())

    again = wait_terminal(client, auth, second["id"])
    assert [fetch_png(m["url"]).tobytes() for m in again["output"]["images"]] == pixels
    different = wait_terminal(client, auth, other["id"])
    assert [fetch_png(m["url"]).tobytes() for m in different["output"]["images"]] != pixels

    image = "data:image/png;base64," + base64.b64encode(png_bytes((48, 40), "blue")).decode()
    ask = {"model": TINY, "task": "understand",
           "input": {"image": image, "question": "What is in the picture?", "seed": 3,
                     "max_new_tokens": 16, "temperature": 1.0}}
    answers = [client.post("/v1/jobs", json=ask, headers=auth).json for _ in range(2)]
    texts = []
    for job in answers:
        result = wait_terminal(client, auth, job["id"])
        assert result["status"] == "succeeded", result
        assert isinstance(result["output"]["text"], str) and result["output"]["text"].strip()
        texts.append(result["output"]["text"])
    assert texts[0] == texts[1]  # same seed, same answer

    metrics = client.get("/metrics").get_data(as_text=True)
    count = next(float(line.split()[-1]) for line in metrics.splitlines() if line.startswith(
        f'janus_job_run_seconds_count{{model="{TINY}",task="generate"}}'))
    assert count >= 3
    assert f'janus_job_run_seconds_bucket{{le="+Inf",model="{TINY}",task="generate"}}' in metrics


def test_cancel_queued_never_runs_and_duplicate_delivery_is_harmless(
    client, auth, settings, spawn
) -> None:
    body = {"model": TINY, "task": "generate", "input": {"prompt": "never", "seed": 1}}
    canceled = client.post("/v1/jobs", json=body, headers=auth).json
    assert client.post(f"/v1/jobs/{canceled['id']}/cancel", headers=auth).json["status"] == (
        "canceled")
    start_worker(spawn, settings)
    ok = client.post("/v1/jobs", json={**body, "input": {"prompt": "once", "seed": 2}},
                     headers=auth).json
    finished = wait_terminal(client, auth, ok["id"])
    assert finished["status"] == "succeeded"

    # The canceled job's message was consumed by now (it was ahead in the queue).
    queue = redis.Redis.from_url(settings.broker_url)
    wait_for(lambda: queue.llen(queue_key(settings, TINY)) == 0, 30, what="queue to drain")
    never = client.get(f"/v1/jobs/{canceled['id']}", headers=auth).json
    assert never["status"] == "canceled" and never["started_at"] is None
    assert never["attempts"] == 0

    # Deliver the finished job's message again: nothing changes.
    engine = create_engine(settings.database_url)
    from service.core.broker import make_celery

    assert publish(make_celery(settings), [(ok["id"], TINY)], 1) == []
    wait_for(lambda: queue.llen(queue_key(settings, TINY)) == 0, 30,
             what="duplicate to be consumed")
    time.sleep(1.0)
    with engine.connect() as conn:
        row = conn.execute(select(Job).where(Job.id == ok["id"])).one()
    assert row.status == "succeeded" and row.attempts == 1
    assert row.completed_at.isoformat(timespec="milliseconds").startswith(
        finished["completed_at"][:23])
    engine.dispose()


def test_worker_with_a_bad_checkpoint_path_fails_at_start_naming_it(settings, tmp_path) -> None:
    import subprocess

    from tests.helpers import settings_env

    missing = str(tmp_path / "no-such-checkpoint")
    env = settings_env(settings.model_copy(update={"models": {"broken": missing}}))
    cli = [*CLI, "worker", "--model"]
    out = subprocess.run([*cli, "broken"], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    assert missing in out.stderr and "broken" in out.stderr
    unknown = subprocess.run([*cli, "nope"], env=env, capture_output=True, text=True,
                             timeout=120)
    assert unknown.returncode != 0 and "nope" in unknown.stderr
