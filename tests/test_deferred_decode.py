"""Finished image rows handed out undecoded (`engine.defer`, `service.models.engine.Deferred`):
the worker's finisher decodes them on its own thread while the engine steps on. The
pixels are the engine's own; a stop before or between decode chunks cancels the rest."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from service.core.db import session_scope
from service.core.tables import Job
from service.lifecycle.jobs import request_cancel
from service.models.base import Canceled, GenerateRequest, GenerateResult
from service.models.engine import run_batch

pytest.importorskip("torch")

from service.models.engine import Deferred, run_to_completion  # noqa: E402
from tests.helpers import Control  # noqa: E402
from tests.test_engine_finisher import ModelQueue  # noqa: E402


def _finished(engine: Any, joins: dict[int, list[tuple[str, Any]]]) -> dict[str, Any]:
    out, step = {}, 0
    while step <= max(joins) or engine.active():
        assert engine.admit(joins.get(step, [])) == []
        out.update(engine.step())
        step += 1
    return out


def _on_a_thread(deferred: Deferred, key: str, control: Any = None) -> Any:
    box: list[Any] = []
    thread = threading.Thread(target=lambda: box.append(deferred.finish(key, control)))
    thread.start()
    thread.join(300)
    return box[0]


@pytest.mark.parametrize("family", ["pro", "flow"])
def test_deferred_rows_decode_elsewhere_to_the_pixels_decoded_in_the_step(
    family: str, request: pytest.FixtureRequest
) -> None:
    """The same rows through the same steps, decoded inside the step or on another
    thread: the same tensors through the same decoder, so the same pixels by
    construction, on any CPU and thread count."""
    runner = request.getfixturevalue(family)
    extra = {"steps": 4} if family == "flow" else {}
    a = GenerateRequest("a red cat", num_images=2, seed=3, **extra)
    b = GenerateRequest("a dog", seed=5, guidance=1.0, **extra)
    joins = {0: [("a", a)], 1: [("b", b)]}
    inline = _finished(runner.open_engine("generate", 3), joins)
    engine = runner.open_engine("generate", 3)
    engine.defer = True
    finished = _finished(engine, joins)
    assert set(finished) == {"a", "b"}
    assert all(isinstance(d, Deferred) for d in finished.values())
    assert engine.active() == [] and engine.free_slots() == 3  # left before the decode
    for key in ("a", "b"):
        control = Control()
        result = _on_a_thread(finished[key], key, control)
        assert isinstance(result, GenerateResult), result
        want = inline[key]
        assert [im.tobytes() for im in result.images] == [im.tobytes() for im in want.images]
        assert set(control.asked) <= {key}  # the caller's key, whatever index the runner uses


@pytest.mark.parametrize("family", ["pro", "flow"])
def test_a_stop_before_the_decode_cancels_it(family: str, request: pytest.FixtureRequest,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    runner = request.getfixturevalue(family)
    extra = {"steps": 3} if family == "flow" else {}
    engine = runner.open_engine("generate", 1)
    engine.defer = True
    finished = _finished(engine, {0: [("a", GenerateRequest("a kite", seed=1, **extra))]})
    decodes: list[int] = []
    name = "_decode_rows" if family == "pro" else "decode"
    real = getattr(runner, name)
    monkeypatch.setattr(runner, name, lambda *a: (decodes.append(1), real(*a))[1])
    result = finished["a"].finish("a", Control(stop_index="a"))  # type: ignore[arg-type]
    assert isinstance(result, Canceled)
    assert decodes == []


def test_janus_pro_decode_reports_progress_to_the_end_under_the_key(pro) -> None:
    engine = pro.open_engine("generate", 1)
    engine.defer = True
    finished = _finished(engine, {0: [("a", GenerateRequest("a kite", num_images=2, seed=1))]})
    control = Control()
    assert isinstance(finished["a"].finish("a", control), GenerateResult)
    fractions = control.progress["a"]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0


def test_run_to_completion_finishes_deferred_rows_itself(pro) -> None:
    engine = pro.open_engine("generate", 2)
    engine.defer = True
    req = GenerateRequest("a boat", seed=9)
    [result] = run_to_completion(engine, [req], Control())
    assert isinstance(result, GenerateResult)
    [want] = run_to_completion(pro.open_engine("generate", 2), [req], Control())
    assert [im.tobytes() for im in result.images] == [im.tobytes() for im in want.images]


def test_a_cancel_after_the_last_step_stops_the_decode_in_the_worker(
    settings, pro, tmp_path: Path
) -> None:
    """b's tokens are all sampled while the finisher is still busy with a; a cancel that
    lands then is heard before b's decode: b ends `canceled`, no image of it stored."""
    from service.workers import lease

    q = ModelQueue(settings, tmp_path, "deferred")
    storage, sessions = q.storage, q.sessions
    a, b = q.submit(1), q.submit(2)
    storage.hold = a
    loop = q.loop(pro, slots=1)
    worker = threading.Thread(target=loop.run, args=("",), daemon=True)
    worker.start()
    try:
        assert storage.holding.wait(120), "a never reached its upload"
        deadline = time.monotonic() + 120
        while loop.finisher.pending() < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert loop.finisher.pending() == 2  # b left the engine; its decode waits behind a
        with session_scope(sessions) as session:
            request_cancel(session=session, job=session.get(Job, b))
        lease.nudge([b])  # what the cancel's push does in a worker process
        deadline = time.monotonic() + 60
        while not any(k.should_stop(b) for k in list(lease._keepers) if k.held({b})):
            assert time.monotonic() < deadline, "the keeper never heard b's cancel"
            time.sleep(0.02)
    finally:
        storage.gate.set()
        worker.join(120)
    assert not worker.is_alive()
    with session_scope(sessions) as session:
        rows = {r.id: r for r in session.scalars(select(Job).where(Job.id.in_([a, b])))}
        assert rows[a].status == "succeeded"
        assert rows[b].status == "canceled" and rows[b].output is None
    assert not list(tmp_path.rglob(f"*{b}*")), "b's images were stored"
    q.engine.dispose()


def test_a_decode_that_raises_is_the_jobs_error(pro, monkeypatch: pytest.MonkeyPatch) -> None:
    from service.models.base import ModelError

    engine = pro.open_engine("generate", 1)
    engine.defer = True
    finished = _finished(engine, {0: [("a", GenerateRequest("a kite", seed=1))]})

    def broken(*_args: Any) -> None:
        raise RuntimeError("decoder on fire")

    monkeypatch.setattr(pro, "_decode_rows", broken)
    result = _on_a_thread(finished["a"], "a")
    assert isinstance(result, ModelError) and "decoder on fire" in str(result)


def test_a_retried_job_decodes_on_the_engine_thread_before_anything_joins(
    settings, pro, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A retried job may be what killed its last worker: it runs alone, its decode too,
    so the job claimed after it is not in the process if that decode kills it again. A
    first attempt's decode runs on the finisher's thread."""
    from sqlalchemy import update

    q = ModelQueue(settings, tmp_path, "deferred")
    sessions = q.sessions
    ids = [q.submit(1), q.submit(2)]
    with session_scope(sessions) as session:  # the first was claimed once, by a worker now gone
        session.execute(update(Job).where(Job.id == ids[0]).values(attempts=1))
    threads: list[str] = []
    real = pro._decode_rows
    monkeypatch.setattr(pro, "_decode_rows",
                        lambda rows: (threads.append(threading.current_thread().name),
                                      real(rows))[1])
    loop = q.loop(pro, slots=2)
    worker = threading.Thread(target=loop.run, args=("",), name="engine-loop", daemon=True)
    worker.start()
    worker.join(300)
    assert not worker.is_alive()
    with session_scope(sessions) as session:
        rows = {r.id: r for r in session.scalars(select(Job).where(Job.id.in_(ids)))}
    assert [(rows[i].status, rows[i].attempts) for i in ids] == [("succeeded", 2),
                                                                ("succeeded", 1)]
    assert threads == ["engine-loop", "engine-finisher"]
    q.engine.dispose()


def test_a_janusflow_decode_out_of_memory_is_split_and_fails_only_alone(
    flow, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    from service.models.base import OutOfMemory
    from service.models.janusflow import sampler

    real, sizes, limit = sampler.decode_latents, [], [1]

    def flaky(vae: Any, z: Any, upsample_to: Any = None) -> Any:
        sizes.append(len(z))
        if len(z) > limit[0]:  # the device's own error type, where a real one would come
            raise torch.OutOfMemoryError("injected: VAE batch too large")
        return real(vae, z, upsample_to)

    monkeypatch.setattr(sampler, "decode_latents", flaky)
    request = GenerateRequest("a lake", num_images=3, seed=1, steps=2)
    [result] = run_batch(flow, "generate", [request])
    assert isinstance(result, GenerateResult) and len(result.images) == 3
    assert sizes == [3, 1, 2, 1, 1]
    limit[0] = 0  # not even one image fits
    [result] = run_batch(flow, "generate", [request])
    assert isinstance(result, OutOfMemory) and result.code == "out_of_memory"
