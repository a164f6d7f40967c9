"""Webhook delivery end to end: API -> Postgres outbox -> a real `janus-service dispatcher`
-> a real HTTP receiver on 127.0.0.1 (allow-listed), and the delivery log the API serves."""

from __future__ import annotations

import json
import signal
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from sqlalchemy import create_engine, select, text, update
from sqlalchemy.orm import Session
from standardwebhooks import Webhook

from service.core.db import make_db, make_sessionmaker, session_scope
from service.core.ids import new_id
from service.core.settings import Settings
from service.core.tables import Batch, WebhookEvent, utcnow
from service.keys.store import create_key, rotate_secret
from service.lifecycle.outbox import batch_event
from service.webhooks.delivery import claim_due
from tests.helpers import IDLE, TINY, free_port, settings_env, start_worker, wait_for

FAST = {
    "JANUS_WEBHOOK_ALLOWLIST": "127.0.0.1",
    "JANUS_WEBHOOK_RETRY_SCHEDULE": "0,0.2,0.4",
    "JANUS_WEBHOOK_TIMEOUT_SECONDS": "1",
    "JANUS_WEBHOOK_CONNECT_TIMEOUT_SECONDS": "1",
    "JANUS_WEBHOOK_POLL_SECONDS": "0.1",
}


@dataclass
class Hit:
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Receiver:
    """A webhook receiver whose answers each test scripts per path; afterwards, 200."""

    hits: list[Hit] = field(default_factory=list)
    plans: dict[str, list[Any]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    port: int = 0

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def to(self, path: str) -> list[Hit]:
        with self.lock:
            return [h for h in self.hits if h.path == path]


def _handler(rx: Receiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            with rx.lock:
                rx.hits.append(Hit(self.path, {k.lower(): v for k, v in self.headers.items()},
                                   body))
                plan = rx.plans.get(self.path) or []
                action = plan.pop(0) if plan else 200
            if isinstance(action, threading.Event):
                action.wait(30)  # hang until the test lets go
                action = 200
            elif isinstance(action, float):
                time.sleep(action)  # hang this long, then answer
                action = 200
            try:
                self.send_response(action[0] if isinstance(action, tuple) else action)
                if isinstance(action, tuple):
                    self.send_header("Location", action[1])
                self.send_header("Content-Length", "5")
                self.end_headers()
                self.wfile.write(b"nope!")
            except OSError:
                pass  # the dispatcher gave up on us already

        def log_message(self, *args: object) -> None:
            pass

    return Handler


@pytest.fixture()
def receiver():  # type: ignore[no-untyped-def]
    rx = Receiver()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(rx))
    server.daemon_threads = True
    rx.port = server.server_address[1]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield rx
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def hook_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"webhook_allowlist": ["127.0.0.1"]})


@pytest.fixture(scope="module")
def hook_client(hook_settings: Settings):  # type: ignore[no-untyped-def]
    from service.api import create_app

    return create_app(hook_settings).test_client()


@pytest.fixture(scope="module")
def sessions(settings: Settings):  # type: ignore[no-untyped-def]
    engine = make_db(settings.database_url)
    yield make_sessionmaker(engine)
    engine.dispose()


@dataclass
class Key:
    id: str
    secret: str
    auth: dict[str, str]


@pytest.fixture()
def key(sessions) -> Key:  # type: ignore[no-untyped-def]
    with session_scope(sessions) as session:
        new = create_key(session=session, name="hooks")
    return Key(new.id, new.webhook_secret, {"Authorization": f"Bearer {new.key}"})


def start_dispatcher(spawn, settings: Settings, **env: str):  # type: ignore[no-untyped-def]
    proc = spawn(["dispatcher"], env=settings_env(settings, **{**FAST, **env}),
                 name="dispatcher")
    wait_for(lambda: "webhook delivery started" in proc.output() or not proc.alive(), 60,
             what="dispatcher to start")
    assert proc.alive(), proc.output()
    return proc


def canceled_job(client, key: Key, url: str, events: list[str] | None = None) -> dict:
    """A queued job (never served model) canceled through the API: one job.canceled event."""
    body = {"model": IDLE, "task": "generate", "input": {"prompt": "hook"}, "webhook": url}
    if events:
        body["webhook_events"] = events
    job = client.post("/v1/jobs", json=body, headers=key.auth)
    assert job.status_code == 202, job.json
    done = client.post(f"/v1/jobs/{job.json['id']}/cancel", headers=key.auth)
    assert done.json["status"] == "canceled"
    return done.json


def deliveries(client, key: Key, job_id: str) -> list[dict]:
    r = client.get(f"/v1/jobs/{job_id}/webhook-deliveries", headers=key.auth)
    assert r.status_code == 200, r.json
    assert r.json["object"] == "list"
    return r.json["data"]


def event_of(sessions, job_id: str) -> WebhookEvent:  # type: ignore[no-untyped-def]
    with sessions() as session:
        return session.scalars(select(WebhookEvent).where(WebhookEvent.job_id == job_id)).one()


def settled(client, key: Key, job_id: str, n: int):  # type: ignore[no-untyped-def]
    """Wait until the job's log holds n tries and its event is no longer in flight."""

    def done() -> list[dict] | None:
        rows = deliveries(client, key, job_id)
        if len(rows) >= n and rows[-1]["event_status"] in ("succeeded", "failed"):
            return rows
        return None

    return wait_for(done, 30, 0.1, what=f"{n} tries for {job_id}")


def test_started_and_succeeded_each_delivered_once_signed(
    hook_client, key, receiver, spawn, settings
) -> None:
    start_dispatcher(spawn, settings)
    start_worker(spawn, settings)
    body = {"model": TINY, "task": "generate", "input": {"prompt": "fox", "seed": 3},
            "webhook": receiver.url("/run"), "webhook_events": ["started", "completed"]}
    job = hook_client.post("/v1/jobs", json=body, headers=key.auth).json
    wait_for(lambda: len(receiver.to("/run")) >= 2, 120, what="two webhooks")
    time.sleep(1.0)  # room for a duplicate to show up
    # Events are not ordered (as with Stripe): two delivery threads may race.
    hits = sorted(receiver.to("/run"), key=lambda h: h.json["type"] != "job.started")
    assert [h.json["type"] for h in hits] == ["job.started", "job.succeeded"]
    for hit in hits:
        payload = Webhook(key.secret).verify(hit.body, hit.headers)
        assert payload["data"]["id"] == job["id"] and payload["data"]["object"] == "job"
        assert set(payload) == {"type", "timestamp", "data"}
        assert abs(int(hit.headers["webhook-timestamp"]) - time.time()) < 60
    assert hits[0].headers["webhook-id"] != hits[1].headers["webhook-id"]
    done = hits[1].json["data"]
    assert done["status"] == "succeeded"
    images = done["output"]["images"]
    assert images and all("url" in i and "key" not in i for i in images)  # fresh URLs

    rows = deliveries(hook_client, key, job["id"])
    assert sorted((r["type"], r["status_code"], r["attempt"], r["event_status"])
                  for r in rows) == [("job.started", 200, 1, "succeeded"),
                                     ("job.succeeded", 200, 1, "succeeded")]
    assert {r["event_id"] for r in rows} == {h.headers["webhook-id"] for h in hits}


def test_500_twice_then_200_is_three_tries_of_one_event(
    hook_client, client, key, receiver, spawn, settings, api_key
) -> None:
    receiver.plans["/flaky"] = [500, 500]
    start_dispatcher(spawn, settings)
    job = canceled_job(hook_client, key, receiver.url("/flaky"))
    rows = settled(hook_client, key, job["id"], 3)
    hits = receiver.to("/flaky")
    assert len(hits) == 3 and len({h.headers["webhook-id"] for h in hits}) == 1
    for hit in hits:
        assert Webhook(key.secret).verify(hit.body, hit.headers)["type"] == "job.canceled"
    assert [(r["attempt"], r["status_code"]) for r in rows] == [(1, 500), (2, 500), (3, 200)]
    assert rows[0]["error"].startswith("HTTP 500") and rows[2]["error"] is None
    assert rows[0]["next_attempt_at"] and rows[1]["next_attempt_at"]
    assert rows[2]["next_attempt_at"] is None and rows[2]["event_status"] == "succeeded"
    assert all(r["event_id"] == hits[0].headers["webhook-id"] for r in rows)
    assert all(r["duration_ms"] >= 0 and r["attempted_at"] for r in rows)
    # Another key sees nothing of it.
    other = client.get(f"/v1/jobs/{job['id']}/webhook-deliveries",
                       headers={"Authorization": f"Bearer {api_key}"})
    assert other.status_code == 404 and other.json["error"]["code"] == "not_found"
    assert hook_client.get("/v1/jobs/job_nope/webhook-deliveries",
                           headers=key.auth).status_code == 404


def test_receiver_down_for_the_whole_schedule_is_given_up(
    hook_client, key, spawn, settings, sessions
) -> None:
    start_dispatcher(spawn, settings)
    job = canceled_job(hook_client, key, f"http://127.0.0.1:{free_port()}/down")
    rows = settled(hook_client, key, job["id"], 3)
    assert len(rows) == 3 and all(r["status_code"] is None for r in rows)
    assert all("connection to 127.0.0.1" in r["error"] for r in rows), rows
    assert rows[-1]["event_status"] == "failed" and rows[-1]["next_attempt_at"] is None
    event = event_of(sessions, job["id"])
    assert event.status == "failed" and event.next_attempt_at is None and event.attempts == 3
    after = hook_client.get(f"/v1/jobs/{job['id']}", headers=key.auth).json
    assert after["status"] == "canceled" and after["completed_at"] == job["completed_at"]


def test_hanging_receiver_times_out_and_is_retried(
    hook_client, key, receiver, spawn, settings
) -> None:
    receiver.plans["/slow"] = [3.0]  # the dispatcher's total timeout is 1 s
    start_dispatcher(spawn, settings)
    job = canceled_job(hook_client, key, receiver.url("/slow"))
    rows = settled(hook_client, key, job["id"], 2)
    assert rows[0]["status_code"] is None and "timeout" in rows[0]["error"]
    assert 900 <= rows[0]["duration_ms"] < 2500
    assert rows[1]["status_code"] == 200 and rows[1]["event_status"] == "succeeded"


def test_410_stops_and_redirects_are_not_followed(
    hook_client, key, receiver, spawn, settings, sessions
) -> None:
    receiver.plans["/gone"] = [410]
    receiver.plans["/moved"] = [(302, receiver.url("/target"))] * 3
    start_dispatcher(spawn, settings)
    gone = canceled_job(hook_client, key, receiver.url("/gone"))
    moved = canceled_job(hook_client, key, receiver.url("/moved"))
    batch_id = completed_batch(sessions, key, receiver.url("/batch"))
    rows = settled(hook_client, key, moved["id"], 3)
    assert [r["status_code"] for r in rows] == [302, 302, 302]
    assert "not followed" in rows[0]["error"] and rows[-1]["event_status"] == "failed"
    assert receiver.to("/target") == []
    gone_rows = settled(hook_client, key, gone["id"], 1)
    assert len(gone_rows) == 1 and len(receiver.to("/gone")) == 1
    assert gone_rows[0]["status_code"] == 410 and gone_rows[0]["event_status"] == "failed"
    assert gone_rows[0]["next_attempt_at"] is None
    # Batch events (no job) go through the same path.
    wait_for(lambda: receiver.to("/batch"), 10, what="batch.completed")
    hit = receiver.to("/batch")[0]
    payload = Webhook(key.secret).verify(hit.body, hit.headers)
    assert payload["type"] == "batch.completed" and payload["data"]["id"] == batch_id


def completed_batch(sessions, key: Key, url: str) -> str:  # type: ignore[no-untyped-def]
    with session_scope(sessions) as session:
        batch = Batch(id=new_id("batch"), api_key_id=key.id, status="completed", total=0,
                      webhook=url, completed_at=utcnow())
        session.add(batch)
        session.flush()
        assert batch_event(session=session, batch=batch) is not None
        return batch.id


def test_event_survives_a_dispatcher_killed_before_and_during_delivery(
    hook_client, key, receiver, spawn, settings, sessions
) -> None:
    # Committed while no dispatcher runs (the previous one was SIGKILLed): delivered later.
    first = start_dispatcher(spawn, settings)
    first.stop(signal.SIGKILL)
    early = canceled_job(hook_client, key, receiver.url("/early"))
    time.sleep(0.5)
    assert receiver.to("/early") == []

    # Killed in the middle of an HTTP attempt: the lease runs out and it is tried again.
    hold = threading.Event()
    receiver.plans["/inflight"] = [hold]
    second = start_dispatcher(spawn, settings)
    wait_for(lambda: receiver.to("/early"), 20, what="the early event")
    inflight = canceled_job(hook_client, key, receiver.url("/inflight"))
    wait_for(lambda: receiver.to("/inflight"), 20, what="the in-flight try")
    second.stop(signal.SIGKILL)
    hold.set()
    assert event_of(sessions, inflight["id"]).status == "delivering"

    start_dispatcher(spawn, settings)
    # lease = 2 x timeout + 2 s
    wait_for(lambda: len(receiver.to("/inflight")) == 2, 20, what="redelivery after lease")
    hits = receiver.to("/inflight")
    assert hits[0].headers["webhook-id"] == hits[1].headers["webhook-id"]
    assert settled(hook_client, key, inflight["id"], 1)[-1]["status_code"] == 200
    assert settled(hook_client, key, early["id"], 1)[-1]["status_code"] == 200
    assert len(receiver.to("/early")) == 1


def test_rotation_signs_with_both_secrets_only_during_grace(
    hook_client, key, receiver, spawn, settings, sessions
) -> None:
    start_dispatcher(spawn, settings)
    with session_scope(sessions) as session:
        new = rotate_secret(session=session, key_id=key.id, grace_seconds=4)
    rotated_at = time.monotonic()
    canceled_job(hook_client, key, receiver.url("/rot1"))
    wait_for(lambda: receiver.to("/rot1"), 10, what="delivery during grace")
    assert time.monotonic() - rotated_at < 4, "too slow to test inside the grace period"
    during = receiver.to("/rot1")[0]
    assert len(during.headers["webhook-signature"].split(" ")) == 2
    Webhook(new).verify(during.body, during.headers)
    Webhook(key.secret).verify(during.body, during.headers)

    time.sleep(max(0.0, 4.2 - (time.monotonic() - rotated_at)))
    canceled_job(hook_client, key, receiver.url("/rot2"))
    wait_for(lambda: receiver.to("/rot2"), 10, what="delivery after grace")
    after = receiver.to("/rot2")[0]
    assert len(after.headers["webhook-signature"].split(" ")) == 1
    Webhook(new).verify(after.body, after.headers)
    with pytest.raises(Exception, match="No matching signature"):
        Webhook(key.secret).verify(after.body, after.headers)


def test_two_dispatchers_never_deliver_an_event_twice(
    hook_client, key, receiver, spawn, settings
) -> None:
    for n in range(2):
        start_dispatcher(spawn, settings, JANUS_WEBHOOK_CONCURRENCY=str(2 + n))
    jobs = [canceled_job(hook_client, key, receiver.url("/pair")) for _ in range(12)]
    wait_for(lambda: len(receiver.to("/pair")) >= 12, 30, what="12 deliveries")
    time.sleep(1.0)
    ids = [h.headers["webhook-id"] for h in receiver.to("/pair")]
    assert len(ids) == len(set(ids)) == 12
    assert {h.json["data"]["id"] for h in receiver.to("/pair")} == {j["id"] for j in jobs}


def test_claims_skip_rows_locked_by_another_claim(hook_client, key, settings, sessions) -> None:
    """Two claims racing in open transactions never take the same event."""
    url = f"http://127.0.0.1:{free_port()}/nobody"
    mine = {canceled_job(hook_client, key, url)["id"] for _ in range(4)}
    engine = create_engine(settings.database_url)
    with Session(engine) as session:
        events = set(session.scalars(
            select(WebhookEvent.id).where(WebhookEvent.job_id.in_(mine))))
    with Session(engine) as a, Session(engine) as b:
        first = {c.id for c in claim_due(session=a, settings=settings, limit=2)}
        b.execute(text("SET LOCAL lock_timeout = '3s'"))  # waiting on a's rows fails, not hangs
        second = {c.id for c in claim_due(session=b, settings=settings, limit=1000)}
        assert first and not first & second  # b skipped the rows a holds
        assert events <= first | second
        a.commit()
        b.commit()
    with Session(engine) as c:
        # Committed claims are leased: not due for anyone until the lease runs out.
        assert not {x.id for x in claim_due(session=c, settings=settings, limit=1000)} & events
        rows = c.scalars(select(WebhookEvent).where(WebhookEvent.id.in_(events))).all()
        assert {e.status for e in rows} == {"delivering"} and {e.attempts for e in rows} == {1}
        c.execute(update(WebhookEvent).where(WebhookEvent.id.in_(events))
                  .values(status="failed", next_attempt_at=None))
        c.commit()
    engine.dispose()
