"""The continuous engine in real worker processes: a job submitted mid-decode joins the
running rows (it starts before the running job ends: run to completion could not), one
row's cancel spares the others, a SIGKILL mid-engine loses nothing."""

from __future__ import annotations

import signal
from datetime import datetime

import boto3
import pytest
from sqlalchemy import create_engine, select

from service.core.tables import Job
from tests.helpers import SLOW, settings_env, start_worker, wait_for, wait_terminal

pytestmark = pytest.mark.slow


def _submit(client, auth, prompt: str, images: int, seed: int) -> str:  # type: ignore[no-untyped-def]
    body = {"model": SLOW, "task": "generate",
            "input": {"prompt": prompt, "num_images": images, "seed": seed}}
    return client.post("/v1/jobs", json=body, headers=auth).json["id"]


def _rows(engine, ids: list[str]) -> dict:  # type: ignore[no-untyped-def]
    with engine.connect() as conn:
        return {r.id: r for r in conn.execute(select(Job).where(Job.id.in_(ids)))}


def _when(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def test_a_job_submitted_mid_decode_starts_before_the_first_ends(slow_client, auth, settings,
                                                           slow_settings, spawn) -> None:
    client = slow_client
    start_worker(spawn, settings, model=SLOW, env=settings_env(slow_settings), max_batch=4)
    engine = create_engine(settings.database_url)
    first = _submit(client, auth, "a long one", 16, 1)
    wait_for(lambda: _rows(engine, [first])[first].status == "running", 60, interval=0.05,
             what="the first job to start")
    second = _submit(client, auth, "a short one", 1, 2)
    a = wait_terminal(client, auth, first, timeout=240)
    b = wait_terminal(client, auth, second, timeout=240)
    assert a["status"] == b["status"] == "succeeded", (a, b)
    # Run to completion would start the second job only once the first had ended.
    assert _when(b["started_at"]) < _when(a["completed_at"])
    assert a["attempts"] == b["attempts"] == 1
    engine.dispose()


def test_canceling_one_row_leaves_the_others_succeeding(slow_client, auth, settings,
                                                        slow_settings, spawn) -> None:
    client = slow_client
    start_worker(spawn, settings, model=SLOW, env=settings_env(slow_settings), max_batch=4)
    engine = create_engine(settings.database_url)
    ids = [_submit(client, auth, f"row {n}", 16, n) for n in range(3)]
    wait_for(lambda: all(r.status == "running" and r.progress > 0
                         for r in _rows(engine, ids).values()),
             120, interval=0.05, what="three rows to be decoding")
    assert client.post(f"/v1/jobs/{ids[1]}/cancel", headers=auth).status_code in (200, 202)
    done = [wait_terminal(client, auth, job_id, timeout=240) for job_id in ids]
    assert [d["status"] for d in done] == ["succeeded", "canceled", "succeeded"], done
    assert _when(done[1]["completed_at"]) < min(_when(done[0]["completed_at"]),
                                                _when(done[2]["completed_at"]))
    assert [len(d["output"]["images"]) for d in (done[0], done[2])] == [16, 16]
    engine.dispose()


def test_sigkill_mid_engine_then_a_new_worker_finishes_every_job_once(
    slow_client, auth, settings, slow_settings, spawn
) -> None:
    client = slow_client
    env = settings_env(slow_settings)
    spawn(["dispatcher"], env=env, name="dispatcher")
    first = start_worker(spawn, settings, model=SLOW, name="first", env=env, max_batch=4)
    engine = create_engine(settings.database_url)
    ids = [_submit(client, auth, f"kill {n}", 6, 10 + n) for n in range(3)]
    wait_for(lambda: all(r.status == "running" and r.progress > 0
                         for r in _rows(engine, ids).values()),
             120, interval=0.05, what="three rows to be decoding")
    first.stop(signal.SIGKILL)
    assert {r.status for r in _rows(engine, ids).values()} == {"running"}  # orphaned

    start_worker(spawn, settings, model=SLOW, name="second", env=env, max_batch=4)
    done = [wait_terminal(client, auth, job_id, timeout=300) for job_id in ids]
    assert [(d["status"], d["attempts"]) for d in done] == [("succeeded", 2)] * 3, done
    s3 = boto3.client("s3", endpoint_url=settings.s3_endpoint_url)
    bucket = settings.storage_url.split("/")[2]
    for job_id in ids:
        keys = [o["Key"] for o in s3.list_objects_v2(
            Bucket=bucket, Prefix=f"t/jobs/{job_id}/").get("Contents", [])]
        assert sorted(keys) == sorted(f"t/jobs/{job_id}/{n}.png" for n in range(6))
    engine.dispose()
