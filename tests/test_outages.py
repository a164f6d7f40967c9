"""Dependencies going away mid-test: a database outage answers 503 with Retry-After (never
a 500) and the app recovers when it is back; a broker that accepts connections but never
answers costs a submission about a second, not a hung API thread."""

from __future__ import annotations

import io
import json
import threading
import time

import pytest
from sqlalchemy import create_engine, func, make_url, select

from service.core.tables import Job
from tests.helpers import IDLE, assert_error_shape
from tests.netfakes import SilentServer, TcpProxy

JOB = {"model": IDLE, "task": "generate", "input": {"prompt": "through an outage"}}


def assert_unavailable(response, dependency: str) -> None:  # type: ignore[no-untyped-def]
    assert_error_shape(response, 503, f"{dependency}_unavailable")
    assert int(response.headers["Retry-After"]) > 0


@pytest.fixture()
def db_proxy(settings):  # type: ignore[no-untyped-def]
    """An app whose database connections go through a proxy the test can cut."""
    from service.api import create_app

    url = make_url(settings.database_url)
    proxy = TcpProxy(url.host or "127.0.0.1", url.port or 5432)
    proxied = url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    app = create_app(settings.model_copy(update={"database_url": proxied}))
    yield app.test_client(), proxy
    proxy.cut()
    app.extensions["janus"].db.dispose()


def test_database_outage_is_a_503_and_the_app_recovers(db_proxy, auth, settings) -> None:
    api, proxy = db_proxy
    assert api.get("/v1/models", headers=auth).status_code == 200
    created = api.post("/v1/jobs", json=JOB, headers=auth)
    assert created.status_code == 202, created.json
    job_id = created.json["id"]

    engine = create_engine(settings.database_url)
    with engine.connect() as conn:
        stored = conn.scalar(select(func.count()).select_from(Job))
    proxy.cut()  # Postgres "restarts": every connection drops, new ones are refused
    assert_unavailable(api.get("/v1/models", headers=auth), "database")
    assert_unavailable(api.get(f"/v1/jobs/{job_id}", headers=auth), "database")
    assert_unavailable(api.get("/v1/jobs", headers=auth), "database")
    assert_unavailable(api.post("/v1/jobs", json=JOB, headers=auth), "database")
    assert_unavailable(api.post(f"/v1/jobs/{job_id}/cancel", headers=auth), "database")
    assert_unavailable(api.get("/v1/batches", headers=auth), "database")
    unknown_key = {"Authorization": "Bearer jk_not_cached_so_looked_up"}
    assert_unavailable(api.get("/v1/models", headers=unknown_key), "database")
    ready = api.get("/readyz")
    error = assert_error_shape(ready, 503, "not_ready")
    assert set(error["details"]["failed"]) == {"database"}
    assert api.get("/metrics").status_code in (200, 503)  # never a 500

    proxy.restore()  # it is back: the pool replaces the dead connections (core/db.py)
    with engine.connect() as conn:  # the refused submission stored nothing
        assert conn.scalar(select(func.count()).select_from(Job)) == stored
    engine.dispose()
    assert api.get("/v1/models", headers=auth).status_code == 200
    assert api.get(f"/v1/jobs/{job_id}", headers=auth).json["status"] == "queued"
    again = api.post("/v1/jobs", json=JOB, headers=auth)
    assert again.status_code == 202, again.json
    assert api.get("/readyz").status_code == 200
    for jid in (job_id, again.json["id"]):
        assert api.post(f"/v1/jobs/{jid}/cancel", headers=auth).status_code == 200


def test_database_lost_in_the_middle_of_a_request(db_proxy, auth) -> None:
    """A `Prefer: wait` poll holds a request open while the database goes away under it."""
    api, proxy = db_proxy
    job_id = api.post("/v1/jobs", json=JOB, headers=auth).json["id"]
    result: dict = {}

    def poll() -> None:
        result["response"] = api.get(f"/v1/jobs/{job_id}",
                                     headers={**auth, "Prefer": "wait=20"})

    thread = threading.Thread(target=poll)
    thread.start()
    time.sleep(1.0)
    proxy.cut()
    thread.join(30)
    assert not thread.is_alive()
    assert_unavailable(result["response"], "database")
    proxy.restore()
    assert api.post(f"/v1/jobs/{job_id}/cancel", headers=auth).status_code == 200


def test_a_broker_that_never_answers_costs_about_a_second(settings, auth) -> None:
    from service.api import create_app

    silent = SilentServer()  # Redis frozen: it accepts connections and never replies
    try:
        frozen = settings.model_copy(
            update={"broker_url": f"redis://127.0.0.1:{silent.port}/0"})
        api = create_app(frozen).test_client()

        started = time.monotonic()
        r = api.post("/v1/jobs", json=JOB, headers=auth)
        took = time.monotonic() - started
        assert r.status_code == 202, r.json
        assert took < 10, took  # was 40 s to over 120 s: a few clients held every thread
        engine = create_engine(settings.database_url)
        with engine.connect() as conn:  # left for the sweeper to publish
            row = conn.execute(select(Job).where(Job.id == r.json["id"])).one()
        engine.dispose()
        assert row.status == "queued" and row.enqueued_at is None

        started = time.monotonic()  # a batch: 2 wake-ups, still one bounded publish
        lines = "\n".join(json.dumps(JOB) for _ in range(2)).encode()
        batch = api.post("/v1/batches", headers=auth, content_type="multipart/form-data",
                         data={"file": (io.BytesIO(lines), "jobs.jsonl")})
        assert batch.status_code == 202, batch.json
        assert time.monotonic() - started < 10
        api.post(f"/v1/batches/{batch.json['id']}/cancel", headers=auth)

        started = time.monotonic()
        ready = api.get("/readyz")
        took = time.monotonic() - started
        error = assert_error_shape(ready, 503, "not_ready")
        assert "broker" in error["details"]["failed"] and took < 10, took

        started = time.monotonic()
        assert api.get("/metrics").status_code == 200  # queue depth unknown, not a hang
        assert time.monotonic() - started < 20
        api.post(f"/v1/jobs/{r.json['id']}/cancel", headers=auth)
    finally:
        silent.close()


def test_object_store_outage_at_submit_is_a_503_that_stores_nothing(settings, auth) -> None:
    """An understanding job stores its image before its row: S3 away is a 503, no job."""
    import base64

    from service.api import create_app
    from tests.helpers import free_port, png_bytes

    dead = settings.model_copy(update={"s3_endpoint_url": f"http://127.0.0.1:{free_port()}"})
    api = create_app(dead).test_client()
    engine = create_engine(settings.database_url)
    with engine.connect() as conn:
        before = conn.scalar(select(func.count()).select_from(Job))
    job = {"model": IDLE, "task": "understand",
           "input": {"image": base64.b64encode(png_bytes()).decode(), "question": "what?"}}
    assert_unavailable(api.post("/v1/jobs", json=job, headers=auth), "storage")
    with engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(Job)) == before
    engine.dispose()
