"""What a running job emits (service/workers/live.py), what the runners report each step,
and the lifecycle hook announcing `started` and terminal statuses after their commit."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from sqlalchemy import select

from service.core.db import make_db, make_sessionmaker, session_scope
from service.core.events import announce_on_commit, event_log
from service.core.settings import Settings
from service.core.storage import storage_from_settings
from service.core.tables import ApiKey, Job
from service.entry.migrate import upgrade
from service.lifecycle import claims
from service.lifecycle.jobs import JobSpec, create_job, request_cancel
from service.models.base import UnderstandRequest, UnderstandResult
from service.models.engine import run_batch
from service.workers.live import LiveReporter, visible
from tests.helpers import Control, make_key


class Recorder:
    """An EventLog stand-in that keeps what was emitted (pure logic: no store needed)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, dict[str, Any]]] = []

    def emit(self, job_id: str, kind: str, data: dict[str, Any]) -> None:
        self.events.append((job_id, kind, data))

    def kinds(self, kind: str) -> list[dict[str, Any]]:
        return [data for _, k, data in self.events if k == kind]


def test_visible_text_holds_back_what_may_still_change() -> None:
    assert visible("  Hello wor") == "Hello wor"
    assert visible("Hello ") == "Hello"
    assert visible("caf\ufffd") == "caf"
    assert visible("a \ufffd\ufffd") == "a"
    assert visible("") == ""


def test_token_deltas_join_to_the_stripped_answer() -> None:
    log = Recorder()
    live = LiveReporter(log, 0.25)  # type: ignore[arg-type]
    for text in [" ", " The", " The", " The caf\ufffd", " The café", " The café is ",
                 " The café is. \ufffd"]:
        live.text("job_a", text)
    live.final_text("job_a", "The café is. \ufffd")
    live.text("job_b", "other")
    deltas = [d["text"] for j, k, d in log.events if j == "job_a"]
    assert "".join(deltas) == "The café is. \ufffd"
    assert all(deltas) and "\ufffd" not in "".join(deltas[:-1])
    assert [d["text"] for j, _, d in log.events if j == "job_b"] == ["other"]


def test_progress_is_throttled_but_keeps_the_first_and_the_last() -> None:
    log = Recorder()
    live = LiveReporter(log, 3600.0)  # type: ignore[arg-type]
    for step in range(1, 101):
        live.progress("job_a", step / 101, step, 101)
    live.progress("job_a", 1.0, None, None)  # "done", without counts
    live.progress("job_a", 1.0, None, None)  # said twice: sent once
    sent = log.kinds("progress")
    assert sent[0] == {"step": 1, "steps": 101, "fraction": round(1 / 101, 4)}
    assert sent[-1] == {"step": 101, "steps": 101, "fraction": 1.0}
    assert len(sent) == 2

    log = Recorder()
    live = LiveReporter(log, 0.0)
    for step in range(1, 11):
        live.progress("job_a", step / 10, step, 10)
    assert [d["step"] for d in log.kinds("progress")] == list(range(1, 11))


def test_without_a_log_nothing_is_reported() -> None:
    live = LiveReporter(None, 0.0)
    live.progress("job_a", 0.5, 1, 2)
    live.text("job_a", "hi")


JOB_IDS = ["job_a", "job_b"]  # the job of each batch position in LiveControl


class LiveControl(Control):
    """The test Control, also forwarding to a LiveReporter as LeaseKeeper does."""

    def __init__(self, live: LiveReporter) -> None:
        super().__init__()
        self.live = live

    def report_progress(self, index: int, fraction: float, step=None, steps=None) -> None:  # type: ignore[no-untyped-def,override]
        super().report_progress(index, fraction, step, steps)
        self.live.progress(JOB_IDS[index], fraction, step, steps)

    def report_text(self, index: int, text_so_far: str) -> None:
        super().report_text(index, text_so_far)
        self.live.text(JOB_IDS[index], text_so_far)


@pytest.mark.parametrize("family", ["janus-pro", "janusflow"])
def test_understanding_streams_its_answer_token_by_token(
    family: str, request: pytest.FixtureRequest
) -> None:
    pytest.importorskip("transformers")
    from service.models import runners

    path = request.getfixturevalue("tiny_checkpoint" if family == "janus-pro"
                                   else "flow_checkpoint")
    runner = runners.load_runner(path, device="cpu", model_id=f"tiny-{family}")
    log = Recorder()
    control = LiveControl(LiveReporter(log, 0.0))  # type: ignore[arg-type]
    image = Image.new("RGB", (48, 80), (200, 30, 30))
    requests = [UnderstandRequest(image, "What is in the picture?", seed=s, temperature=1.0,
                                  max_new_tokens=12) for s in (1, 2)]
    results = run_batch(runner, "understand", requests, control)
    for index, job_id in enumerate(JOB_IDS):
        result = results[index]
        assert isinstance(result, UnderstandResult), result
        control.live.final_text(job_id, result.text)  # as the job handler does
        # Reported every step: the last report is the whole answer.
        assert control.texts[index][-1].strip() == result.text
        deltas = [d["text"] for j, k, d in log.events if j == job_id and k == "token"]
        assert "".join(deltas) == result.text
        progress = [d for j, k, d in log.events if j == job_id and k == "progress"]
        assert progress[-1]["fraction"] == 1.0
        assert all(p["steps"] == 12 for p in progress if p["steps"] is not None)


# -- announced after the commit --------------------------------------------------------------
@pytest.fixture()
def embedded(tmp_path: Path) -> Settings:
    settings = Settings(data_dir=tmp_path, models={"m": str(tmp_path)})
    upgrade(settings.database_url)
    return settings


def test_started_and_terminal_statuses_are_announced_after_commit(embedded: Settings) -> None:
    log = event_log(embedded)
    engine = make_db(embedded.database_url)
    sessions = make_sessionmaker(engine)
    announce_on_commit(sessions, log)
    make_key(embedded)
    storage = storage_from_settings(embedded)
    with session_scope(sessions) as session:
        key_id = session.scalars(select(ApiKey.id)).one()
    spec = JobSpec(model="m", task="generate", input={"prompt": "p", "seed": 1})
    ids = []
    for _ in range(3):
        job, _ = create_job(db=engine, storage=storage, api_key_id=key_id, spec=spec)
        ids.append(job.id)
    a, b, c = ids
    # A cancel that rolls back announces nothing.
    session = sessions()
    request_cancel(session=session, job=session.get(Job, a))
    session.rollback()
    session.close()
    # A claim announces `started`; finishing announces the status and ends the stream.
    with session_scope(sessions) as session:
        claimed = claims.claim_next(session=session, model="m", worker_id="w",
                                    lease_seconds=60, limit=1)
    assert [j.id for j in claimed] == [a]
    with session_scope(sessions) as session:
        assert claims.finish(session=session, job_id=a, worker_id="w", status="succeeded",
                             output={"images": [], "seed": 1})
    with session_scope(sessions) as session:
        request_cancel(session=session, job=session.get(Job, b))
    assert log.flush()
    assert [(e.kind, e.data) for e in log.read(a, None, 0)] == [
        ("started", {}), ("status", {"status": "succeeded"})]
    assert [(e.kind, e.data) for e in log.read(b, None, 0)] == [
        ("status", {"status": "canceled"})]
    assert log.read(c, None, 0) == []
