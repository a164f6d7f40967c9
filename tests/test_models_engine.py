"""The continuous engines of the runners (tiny checkpoints, CPU): rows join between steps,
leave when done or dropped, and give what a batch run to completion gives."""

from __future__ import annotations

from typing import Any

import pytest
from PIL import Image

from service.models.base import (
    Canceled,
    GenerateRequest,
    GenerateResult,
    InvalidInput,
    ModelError,
    OutOfMemory,
    UnderstandRequest,
    UnderstandResult,
)
from service.models.engine import run_batch

pytest.importorskip("torch")

from service.models.engine import run_to_completion  # noqa: E402
from tests.helpers import Control  # noqa: E402


def _run(engine: Any, joins: dict[int, list[tuple[str, Any]]]) -> tuple[dict, dict]:
    """Step until empty, admitting `joins[step]` before each step; returns the results and
    the step each job finished at."""
    results, at, step = {}, {}, 0
    while step <= max(joins, default=-1) or engine.active():
        assert engine.admit(joins.get(step, [])) == []
        for key, result in engine.step():
            results[key], at[key] = result, step
        step += 1
    return results, at


def _pixels(result: GenerateResult) -> list[bytes]:
    return [im.tobytes() for im in result.images]


def test_janus_pro_rows_join_late_and_leave_when_done(pro) -> None:
    first = GenerateRequest("a red cat", num_images=2, seed=3)
    late = GenerateRequest("dog", seed=5, guidance=1.0, temperature=0.6)
    engine = pro.open_engine("generate", 4)
    assert engine.admit([("a", first)]) == []
    assert engine.cache.rows == 4  # 2 images x (conditional + unconditional)
    for _ in range(5):
        assert engine.step() == []
    done, steps = engine.progress()["a"]
    assert 0 < done < steps
    assert engine.admit([("b", late)]) == []
    assert engine.cache.rows == 5  # guidance 1: no unconditional row
    assert engine.free_slots() == 2
    results, at = _run(engine, {})
    steps = pro.num_image_tokens
    assert at == {"a": steps - 6, "b": steps - 1}  # each left after its own 576th token
    assert engine.active() == [] and engine.cache.rows == 0
    assert _pixels(results["a"]) == _pixels(run_batch(pro, "generate", [first])[0])
    assert _pixels(results["b"]) == _pixels(run_batch(pro, "generate", [late])[0])


def test_janus_pro_refusals_and_drop(pro) -> None:
    engine = pro.open_engine("generate", 2)
    refused = engine.admit([
        ("bad", GenerateRequest("x", guidance=0.5)),
        ("a", GenerateRequest("a", seed=1)),
        ("b", GenerateRequest("b", seed=2)),
        ("c", GenerateRequest("c", seed=3)),
    ])
    assert isinstance(dict(refused)["bad"], InvalidInput)
    assert set(dict(refused)) == {"bad", "c"}  # c: no free slot
    engine.step()
    assert engine.drop("a") and not engine.drop("a")
    assert engine.active() == ["b"] and engine.free_slots() == 1
    results, _ = _run(engine, {})
    assert _pixels(results["b"]) == _pixels(run_batch(pro, "generate",
                                                      [GenerateRequest("b", seed=2)])[0])


def test_janus_pro_text_rows_finish_at_their_own_step(pro) -> None:
    image = Image.new("RGB", (48, 80), (200, 30, 30))
    short = UnderstandRequest(image, "Why?", seed=8, temperature=1.5, max_new_tokens=3)
    long = UnderstandRequest(image, "What is in the picture?", seed=5, temperature=1.0,
                             top_p=0.9, max_new_tokens=12)
    engine = pro.open_engine("understand", 4)
    texts: list[str] = []
    engine.admit([("long", long)])
    engine.step()
    engine.admit([("short", short)])
    results = {}
    while engine.active():
        texts.append(engine.texts().get("long", ""))
        results.update(engine.step())
    assert all(isinstance(r, UnderstandResult) for r in results.values())
    assert results["short"].stats["new_tokens"] <= 3
    for key, request in (("short", short), ("long", long)):
        assert results[key].text == run_batch(pro, "understand", [request])[0].text
    assert texts[-1] and results["long"].text.startswith(texts[-1][:1])


def test_janusflow_jobs_with_their_own_steps_join_and_leave(flow) -> None:
    a = GenerateRequest("a lake", seed=1, steps=5)
    b = GenerateRequest("a tree", num_images=2, seed=2, steps=3, guidance=1.0)
    engine = flow.open_engine("generate", 3)
    results, at = _run(engine, {0: [("a", a)], 2: [("b", b)]})
    assert at == {"a": 4, "b": 4}
    for key, request in (("a", a), ("b", b)):
        assert _pixels(results[key]) == _pixels(run_batch(flow, "generate", [request])[0])


def test_janus_pro_out_of_memory_steps_each_job_alone_and_fails_only_one_too_big(pro) -> None:
    import torch

    small = [GenerateRequest(f"job {i}", seed=i) for i in range(2)]  # 2 rows each
    big = GenerateRequest("big", num_images=2, seed=9)  # 4 rows
    engine = pro.open_engine("generate", 4)
    step = engine.cache.step

    def tight(x, lo=0, hi=None):  # type: ignore[no-untyped-def]
        rows = (engine.cache.rows if hi is None else hi) - lo
        if rows > 2:  # the device's own error type, where a real one would come from
            raise torch.OutOfMemoryError("injected: more than 2 rows")
        return step(x, lo, hi)

    engine.cache.step = tight
    results, _ = _run(engine, {0: [("a", small[0]), ("big", big), ("b", small[1])]})
    assert isinstance(results["big"], OutOfMemory)
    for key, request in (("a", small[0]), ("b", small[1])):
        assert _pixels(results[key]) == _pixels(run_batch(pro, "generate", [request])[0])


def test_janusflow_text_rows_join_late_leave_at_their_budget_and_match_a_batch_run_to_completion(
    flow,
) -> None:
    image = Image.new("RGB", (48, 80), (200, 30, 30))
    greedy = UnderstandRequest(image, "What is in the picture?", seed=4, temperature=0.0,
                               max_new_tokens=7)
    sampled = UnderstandRequest(image, "Why?", seed=9, temperature=1.0, max_new_tokens=4)
    default = UnderstandRequest(Image.new("RGB", (30, 30), "blue"), "hi", seed=2,
                                max_new_tokens=5)  # the demo's 0.1 / 0.95 / top-k 50
    engine = flow.open_engine("understand", 3)
    results, at = _run(engine, {0: [("greedy", greedy)], 2: [("sampled", sampled)],
                                3: [("default", default)]})
    # Each left after its own budget (a random checkpoint never says end-of-sentence).
    assert at == {"greedy": 6, "sampled": 5, "default": 7}
    assert engine.active() == [] and engine.cache.rows == 0
    for key, request in (("greedy", greedy), ("sampled", sampled), ("default", default)):
        assert isinstance(results[key], UnderstandResult)
        assert results[key].text == run_batch(flow, "understand", [request])[0].text, key
        assert results[key].stats["new_tokens"] == request.max_new_tokens
    again = run_batch(flow, "understand",
                      [UnderstandRequest(image, "Why?", seed=10, temperature=1.0,
                                               max_new_tokens=4)])[0]
    assert again.text != results["sampled"].text  # the seed matters


def test_janusflow_text_row_leaves_at_end_of_sentence(flow) -> None:
    request = UnderstandRequest(Image.new("RGB", (40, 40), "red"), "hi?", seed=5,
                                temperature=1.0, max_new_tokens=12)
    engine = flow.open_engine("understand", 2)
    engine.admit([("a", request)])
    for _ in range(6):
        engine.step()
    out = list(engine.jobs["a"].out)
    # The first token that did not come before it plays end-of-sentence in a second run.
    cut = next(i for i in range(1, len(out)) if out[i] not in out[:i])
    engine = flow.open_engine("understand", 2)
    engine.eos = out[cut]
    results, at = _run(engine, {0: [("a", request)]})
    assert at == {"a": cut}
    assert results["a"].stats["new_tokens"] == cut
    assert results["a"].text == flow.tokenizer.decode(out[:cut], skip_special_tokens=True).strip()


def test_janusflow_text_refusals_take_no_slot_and_drop_frees_one(flow) -> None:
    image = Image.new("RGB", (32, 32), "green")
    a = UnderstandRequest(image, "a?", seed=1, temperature=1.0, max_new_tokens=5)
    b = UnderstandRequest(image, "b?", seed=2, max_new_tokens=5)
    engine = flow.open_engine("understand", 2)
    calls = []
    tower = flow.model.image_features

    def counted(pixels):  # type: ignore[no-untyped-def]
        calls.append(pixels.shape[0])
        return tower(pixels)

    flow.model.image_features = counted
    try:
        refused = dict(engine.admit([
            ("bad", UnderstandRequest(image, "x", max_new_tokens=0)),
            ("image", GenerateRequest("not a question")),
            ("a", a), ("b", b),
            ("c", UnderstandRequest(image, "c?", seed=3)),
        ]))
    finally:
        flow.model.image_features = tower
    assert isinstance(refused["bad"], InvalidInput)
    assert "not an understanding request" in str(refused["image"])
    assert str(refused["c"]) == "no free slot in the engine"  # bad took none of the two
    assert set(refused) == {"bad", "image", "c"} and engine.active() == ["a", "b"]
    assert calls == [2]  # one tower pass for the jobs admitted together
    engine.step()
    assert engine.drop("a") and not engine.drop("a")
    assert engine.active() == ["b"] and engine.free_slots() == 1 and engine.cache.rows == 1
    results, _ = _run(engine, {})
    assert results["b"].text == run_batch(flow, "understand", [b])[0].text


def test_run_to_completion_drives_the_engine_under_its_control(flow) -> None:
    image = Image.new("RGB", (36, 36), "yellow")
    ok = UnderstandRequest(image, "ok?", seed=1, temperature=1.0, max_new_tokens=5)
    batch = [ok, UnderstandRequest(image, "stop me", seed=2, max_new_tokens=20),
             UnderstandRequest(image, "x", max_new_tokens=0),
             UnderstandRequest(image, "never", seed=3)]
    control = Control(stop_index=1, after=3)  # job 1: asked before the start and 2 steps
    control.should_stop = lambda i, ask=control.should_stop: i == 3 or ask(i)  # type: ignore
    results = run_batch(flow, "understand", batch, control)
    assert isinstance(results[1], Canceled) and str(results[1]) == "canceled"
    assert isinstance(results[2], InvalidInput)
    assert isinstance(results[3], Canceled) and "before start" in str(results[3])
    assert results[0].text == run_batch(flow, "understand", [ok])[0].text
    assert control.progress[0][-1] == 1.0
    # One text report a token while it ran, the last one the whole answer.
    assert len(control.texts[0]) == 5 and control.texts[0][-1] == results[0].text


def test_a_fault_of_a_step_fails_each_job_still_running(flow) -> None:
    image = Image.new("RGB", (36, 36), "yellow")
    engine = flow.open_engine("understand", 2)

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a bug")

    engine.cache.step = broken
    batch = [UnderstandRequest(image, "a?", max_new_tokens=1),
             UnderstandRequest(image, "b?", max_new_tokens=4)]
    results = run_to_completion(engine, batch, Control())
    # The first job was done at its first token, but its step failed as a whole.
    assert [str(r) for r in results] == ["a bug", "a bug"]
    assert all(isinstance(r, ModelError) for r in results)
    assert engine.active() == [] and engine.cache.rows == 0
