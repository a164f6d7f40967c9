"""Cross-job batching in the Janus-Pro runner (tiny 64 px checkpoint, float32, CPU).

A job's output must depend only on its inputs and seed: the same job alone and inside a
batch of mixed jobs gives identical tokens. The loop must also agree with transformers' own
`generate` where both are deterministic (greedy), leave the batch cleanly on cancellation,
and split the batch on out-of-memory without failing innocent jobs.
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
    return runners.load_runner(tiny_checkpoint, device="cpu", model_id="tiny-janus-pro")


def _tokens(runner: Any, batch: list[GenerateRequest]) -> list[Any]:
    jobs = [runner._image_job(i, r) for i, r in enumerate(batch)]
    with torch.inference_mode():
        return runner.decoder.image_tokens(jobs, NullControl())


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
    together = runner.generate(MIXED[:3])
    assert all(isinstance(r, GenerateResult) for r in together)
    assert together[0].stats["batch_jobs"] == 3
    [alone] = runner.generate([MIXED[2]])
    assert _pixels(alone) == _pixels(together[2])


def test_text_alone_equals_batched(runner) -> None:
    together = runner.understand(QUESTIONS)
    assert all(isinstance(r, UnderstandResult) for r in together), together
    for request, batched in zip(QUESTIONS, together, strict=True):
        [alone] = runner.understand([request])
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
    [ours] = runner.understand([request, QUESTIONS[0]])[:1]
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
    results = runner.generate(MIXED[:3], control)
    assert isinstance(results[1], Canceled)
    assert control.asked[1] == 7 and len(control.progress[1]) == 5  # steps 1..5 reported
    for index in (0, 2):
        [alone] = runner.generate([MIXED[index]])
        assert _pixels(results[index]) == _pixels(alone)
        progress = control.progress[index]
        assert progress == sorted(progress) and progress[-1] == pytest.approx(1.0)
        assert 0 < progress[0] < 0.1


def test_cancel_text_mid_batch(runner) -> None:
    control = Control(stop_index=0, after=3)
    results = runner.understand(QUESTIONS[:3], control)
    assert isinstance(results[0], Canceled)
    assert [r.text for r in results[1:]] == [r.text for r in runner.understand(QUESTIONS[1:3])]


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


def test_runner_splits_batch_on_oom(runner, monkeypatch: pytest.MonkeyPatch) -> None:
    expected = runner.generate(MIXED)
    original = runner.decoder.image_tokens
    sizes: list[int] = []

    def tight(jobs, control):  # type: ignore[no-untyped-def]
        sizes.append(len(jobs))
        # "Memory" for 3 images at once; job 2 alone needs 3 + 1 rows' worth -> too big.
        if sum(j.num_images for j in jobs) > 3 or any(j.num_images == 3 for j in jobs):
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        return original(jobs, control)

    monkeypatch.setattr(runner.decoder, "image_tokens", tight)
    results = runner.generate(MIXED)
    assert sizes[0] == 5 and max(sizes[1:]) < 5
    assert isinstance(results[2], OutOfMemory)
    for index in (0, 1, 3, 4):
        assert _pixels(results[index]) == _pixels(expected[index])


def test_static_step_matches_eager(runner) -> None:
    # The fixed-shape step that torch.compile captures on a GPU, run eagerly here.
    from service.models.janus_pro.decode import JanusDecoder
    from service.models.lm import LeanLM

    lm = LeanLM(runner.model.model.language_model, static=True)
    eager = runner.decoder
    try:
        runner.decoder = JanusDecoder(
            runner.model, lm, eager.num_image_tokens, eager.eos_token_id, poll_every=4
        )
        static = _tokens(runner, MIXED[:2])
    finally:
        runner.decoder = eager
    assert all(torch.equal(a, b) for a, b in zip(static, _tokens(runner, MIXED[:2]), strict=True))


def test_warmup_runs_the_batched_loops(runner, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[str, int]] = []
    image, text = runner.decoder.image_tokens, runner.decoder.text_tokens
    monkeypatch.setattr(
        runner.decoder,
        "image_tokens",
        lambda jobs, c: seen.append(("image", len(jobs))) or image(jobs, c),
    )
    monkeypatch.setattr(
        runner.decoder,
        "text_tokens",
        lambda jobs, c: seen.append(("text", len(jobs))) or text(jobs, c),
    )
    runner.warmup()
    assert ("image", 2) in seen and ("text", 1) in seen


def test_sparse_polling_gives_the_same_outputs(runner) -> None:
    # On a GPU the loops poll every few steps (no host sync in between); rows that met EOS
    # run on until the next poll, which must not change any job's output.
    from service.models.janus_pro.decode import JanusDecoder

    eager = runner.decoder
    sparse = JanusDecoder(
        runner.model, eager.lm, eager.num_image_tokens, eager.eos_token_id, poll_every=3
    )
    texts = [runner._text_job(i, q) for i, q in enumerate(QUESTIONS)]
    images = [runner._image_job(i, r) for i, r in enumerate(MIXED[:2])]
    with torch.inference_mode():
        assert sparse.text_tokens(texts, NullControl()) == eager.text_tokens(texts, NullControl())
        expected = eager.image_tokens(images, NullControl())
        got = sparse.image_tokens(images, NullControl())
        assert all(torch.equal(a, b) for a, b in zip(got, expected, strict=True))
        control = Control(stop_index=1, after=2)  # polls at steps 0 and 3: leaves after step 3
        out = sparse.image_tokens(images, control)
    assert isinstance(out[1], Canceled) and torch.equal(out[0], expected[0])
    assert control.asked[1] == 3
