"""The compiled engine step (`--compile`, `service.models.compiling`) on the tiny Janus-Pro
checkpoint: the frozen heads, and the decoder layers' math (compiled on CUDA only, tested
here all the same).

torch.compile's kernels round differently from eager ones (fused reductions, inductor's
own GEMM), so the compiled step is held to eager within float tolerance, not to the bit;
what it must never do is recompile as rows join and leave, or fail on any row count or
length.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from service.models import runners  # noqa: E402
from service.models.base import GenerateRequest, GenerateResult  # noqa: E402
from service.models.engine import run_batch, run_to_completion  # noqa: E402
from tests.helpers import Control  # noqa: E402

REQUESTS = [
    GenerateRequest("a red cat", seed=1, temperature=0.0),
    GenerateRequest("a much longer prompt about a lighthouse on a cliff", seed=2, num_images=2),
    GenerateRequest("x", seed=3, guidance=1.0),
]


@pytest.fixture(scope="module")
def compiled(tiny_checkpoint: str):
    runner = runners.load_runner(tiny_checkpoint, device="cpu", compile=True)
    runner.lm.compile()  # what a CUDA runner's compile adds
    return runner


def test_the_compiled_heads_match_eager(compiled, pro) -> None:
    from PIL import Image

    from service.models.base import UnderstandRequest

    hidden = torch.randn(6, compiled.lm.hidden, generator=torch.Generator().manual_seed(0))
    index = (torch.tensor([0, 1, 2]), torch.tensor([3, 4, 2]))
    mix = (torch.tensor([[True], [True], [False]]), torch.tensor([[5.0], [2.0], [1.0]]),
           torch.tensor([[1.0], [0.7], [1.0]]))
    with torch.inference_mode():  # as the engines call them
        for n in (3, 2, 3):
            args = (hidden[: 2 * n], index[0][:n], index[1][:n] % (2 * n),
                    *(m[:n] for m in mix))
            torch.testing.assert_close(compiled.image_scores(*args), pro.image_scores(*args),
                                       rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(compiled.text_head(hidden[:n]),
                                       pro.text_head(hidden[:n]), rtol=1e-4, atol=1e-4)
    asked = UnderstandRequest(Image.new("RGB", (32, 32), (9, 99, 199)), "what is it?",
                              max_new_tokens=4)
    [answer] = run_batch(compiled, "understand", [asked])
    assert answer.completion_tokens is not None


def test_compiled_step_matches_eager_and_never_recompiles(compiled, monkeypatch) -> None:
    from torch._dynamo.utils import counters

    from service.models import ragged

    # The tiny model's jobs are 16 tokens long: small buckets, so that they cross several.
    monkeypatch.setattr(ragged, "LENGTH_BUCKET", 4)
    lm = compiled.lm
    assert lm.compiled
    fast = lm.decode_layers
    ends: list[int] = []

    def both(x, rope, kv, mask, rows, columns, end):  # type: ignore[no-untyped-def]
        # The same inputs through both: the eager step on a copy of the cache.
        kv_eager = kv.clone()
        want = fast(x, rope, kv_eager, mask, rows, columns, end, eager=True)
        got = fast(x, rope, kv, mask, rows, columns, end)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(kv, kv_eager, rtol=1e-4, atol=1e-4)
        ends.append(end)
        return got

    monkeypatch.setattr(lm, "decode_layers", both)
    counters.clear()
    engine = compiled.open_engine("generate", 4)
    assert not engine.admit(list(enumerate(REQUESTS)))
    step = 0
    while engine.active():
        if step == 2:
            engine.drop(2)  # rows leave ...
        if step == 4:
            assert not engine.admit([("late", REQUESTS[0])])  # ... and join
        engine.step()
        step += 1
    assert {e % 4 for e in ends} == {0} and len(set(ends)) >= 3, ends
    # One dynamic graph per compiled function (two pieces, the image head) for every row
    # count and length; dynamo may add one each for a single row.
    assert 0 < counters["stats"]["unique_graphs"] <= 6


def test_compiled_engine_runs_jobs_to_the_end(compiled) -> None:
    results = run_to_completion(compiled.open_engine("generate", 3), REQUESTS, Control())
    assert all(isinstance(r, GenerateResult) for r in results), results
    assert [len(r.images) for r in results] == [1, 2, 1]
