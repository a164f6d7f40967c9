"""Cross-job batching in the Janus-Pro engines, run to completion (tiny 64 px checkpoint,
float32, CPU).

A job's output must depend only on its inputs and seed: the same job alone and inside a
batch of mixed jobs gives identical tokens. That holds by construction only in the
batch-invariant mode (README, "Reproducibility"; batched products may round by row count
on another CPU), so the runner here runs in it. The engines must also agree with transformers'
own `generate` where both are deterministic (greedy) and leave the batch cleanly on
cancellation. (Out of memory in a step: tests/test_models_engine.py.)
"""

from __future__ import annotations

from typing import Any

import pytest
from PIL import Image

from service.models import runners
from service.models.base import (
    Canceled,
    GenerateRequest,
    GenerateResult,
    NullControl,
    OutOfMemory,
    UnderstandRequest,
    UnderstandResult,
)
from service.models.engine import run_batch, run_to_completion
from service.models.oom import run_split_on_oom
from tests.helpers import Control

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

MIXED = [
    GenerateRequest("a red cat", num_images=2, seed=3),
    GenerateRequest(
        "a long prompt about a lake at sunset with mountains, pine trees and a boat",
        seed=4,
        guidance=1.0,
        temperature=0.0,
    ),
    GenerateRequest("dog", num_images=3, seed=5, guidance=2.5, temperature=0.6),
    GenerateRequest("x", seed=6, guidance=7.0, temperature=1.3),
    GenerateRequest("a painting of a house", seed=7, guidance=3.0, temperature=0.0),
]


def _image(shade: int) -> Image.Image:
    return Image.new("RGB", (48, 80), (200, shade, 30))


QUESTIONS = [
    UnderstandRequest(
        _image(30), "What is in the picture?", seed=5, temperature=1.0, max_new_tokens=12
    ),
    UnderstandRequest(
        _image(90),
        "Describe this image in detail, please.",
        seed=6,
        temperature=0.0,
        max_new_tokens=5,
    ),
    UnderstandRequest(
        _image(150),
        "How many people are there?",
        seed=7,
        temperature=0.8,
        top_p=0.5,
        max_new_tokens=9,
    ),
    UnderstandRequest(_image(210), "Why?", seed=8, temperature=1.5, top_p=0.9, max_new_tokens=16),
    UnderstandRequest(
        _image(0), "What is in the picture?", seed=9, temperature=1.0, max_new_tokens=12
    ),
]



@pytest.fixture(scope="module")
def runner(tiny_checkpoint: str):
    return runners.load_runner(tiny_checkpoint, device="cpu", model_id="tiny-janus-pro",
                               batch_invariant=True)


def _tokens(runner: Any, batch: list[GenerateRequest]) -> list[Any]:
    """Each job's (num_images, 576) image tokens, from the engine, before any VQ decode."""
    engine = runner.open_engine("generate", len(batch))
    engine._result = lambda live, _seconds: live.tokens.clone()
    return run_to_completion(engine, batch, NullControl())


def _pixels(result: GenerateResult) -> list[bytes]:
    return [im.tobytes() for im in result.images]


def test_image_tokens_alone_equal_batched(runner) -> None:
    together = _tokens(runner, MIXED)
    assert [t.shape for t in together] == [(r.num_images, 16) for r in MIXED]
    for request, batched in zip(MIXED, together, strict=True):
        [alone] = _tokens(runner, [request])
        assert torch.equal(alone, batched), request
    # Different seeds do differ, so the equality above is not vacuous.
    assert not torch.equal(
        _tokens(runner, [MIXED[0]])[0],
        _tokens(runner, [GenerateRequest("a red cat", num_images=2, seed=4)])[0],
    )


def test_images_alone_equal_batched(runner) -> None:
    together = run_batch(runner, "generate", MIXED[:3])
    assert all(isinstance(r, GenerateResult) for r in together)
    assert together[0].stats["batch_jobs"] == 3
    [alone] = run_batch(runner, "generate", [MIXED[2]])
    assert _pixels(alone) == _pixels(together[2])


def test_text_alone_equals_batched(runner) -> None:
    together = run_batch(runner, "understand", QUESTIONS)
    assert all(isinstance(r, UnderstandResult) for r in together), together
    for request, batched in zip(QUESTIONS, together, strict=True):
        [alone] = run_batch(runner, "understand", [request])
        assert alone.text == batched.text
        assert alone.stats["new_tokens"] == batched.stats["new_tokens"] <= request.max_new_tokens


def test_greedy_images_match_transformers_generate(runner) -> None:
    # Deterministic both ways: our loop (batched with others) must give exactly the tokens
    # of transformers' own image `generate` for each job alone. This pins down guidance,
    # left padding, positions and the KV cache.
    batch = [
        GenerateRequest("a red cat on a chair", seed=1, guidance=5.0, temperature=0.0),
        GenerateRequest("x", seed=2, guidance=2.0, temperature=0.0),
        MIXED[2],
    ]
    ours = _tokens(runner, batch)
    for request, tokens in zip(batch[:2], ours[:2], strict=True):
        messages = [{"role": "user", "content": [{"type": "text", "text": request.prompt}]}]
        text = runner.processor.apply_chat_template(messages, add_generation_prompt=True)
        inputs = runner.processor(text=text, generation_mode="image", return_tensors="pt")
        theirs = runner.model.generate(
            **inputs, generation_mode="image", do_sample=False, guidance_scale=request.guidance
        )
        assert torch.equal(tokens, theirs)


def test_greedy_text_matches_transformers_generate(runner) -> None:
    request = UnderstandRequest(
        _image(60), "What is in the picture?", temperature=0.0, max_new_tokens=10
    )
    [ours] = run_batch(runner, "understand", [request, QUESTIONS[0]])[:1]
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": request.question}]}
    ]
    text = runner.processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = runner.processor(text=text, images=request.image, return_tensors="pt")
    out = runner.model.generate(**inputs, max_new_tokens=10, do_sample=False)
    new = out[0, inputs["input_ids"].shape[1] :]
    assert ours.text == runner.processor.tokenizer.decode(new, skip_special_tokens=True).strip()


def test_cancel_mid_batch_leaves_the_others_alone(runner) -> None:
    control = Control(stop_index=1, after=6)  # asked once before start, then once per step
    results = run_batch(runner, "generate", MIXED[:3], control)
    assert isinstance(results[1], Canceled)
    assert control.asked[1] == 7 and len(control.progress[1]) == 5  # steps 1..5 reported
    for index in (0, 2):
        [alone] = run_batch(runner, "generate", [MIXED[index]])
        assert _pixels(results[index]) == _pixels(alone)
        progress = control.progress[index]
        assert progress == sorted(progress) and progress[-1] == pytest.approx(1.0)
        assert 0 < progress[0] < 0.1


def test_cancel_text_mid_batch(runner) -> None:
    control = Control(stop_index=0, after=3)
    results = run_batch(runner, "understand", QUESTIONS[:3], control)
    assert isinstance(results[0], Canceled)
    alone = run_batch(runner, "understand", QUESTIONS[1:3])
    assert [r.text for r in results[1:]] == [r.text for r in alone]


def test_split_on_oom_fake_fn() -> None:
    calls: list[list[int]] = []

    def fn(items: list[int]) -> list[int]:
        calls.append(items)
        if len(items) > 2 or 13 in items:
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        return [i * 10 for i in items]

    assert run_split_on_oom(fn, [1, 2, 3, 4, 5]) == [10, 20, 30, 40, 50]
    assert calls == [[1, 2, 3, 4, 5], [1, 2], [3, 4, 5], [3], [4, 5]]
    out = run_split_on_oom(fn, [1, 13, 3])
    assert out[0] == 10 and out[2] == 30 and isinstance(out[1], OutOfMemory)
    assert run_split_on_oom(fn, []) == []


def test_warmup_steps_each_engine_a_little_and_decodes_once(runner, monkeypatch) -> None:
    from service.models.base import WARMUP_STEPS

    engines: list[Any] = []
    open_engine, decode_rows = runner.open_engine, runner._decode_rows
    monkeypatch.setattr(runner, "open_engine",
                        lambda task, slots: engines.append(open_engine(task, slots))
                        or engines[-1])
    decoded: list[int] = []
    monkeypatch.setattr(runner, "_decode_rows",
                        lambda rows: decoded.append(len(rows)) or decode_rows(rows))
    runner.warmup()
    assert [(e.task, e.slots) for e in engines] == [
        ("understand", 1), ("understand", 2), ("generate", 1), ("generate", 2)]
    # A few steps each, not whole jobs; nothing left running; one image through the VQ.
    assert all(e.steps_run == WARMUP_STEPS and not e.active() for e in engines)
    assert engines[2].cache.rows == 0 and decoded == [1]
