"""The compiled engine step (`--compile`, `LeanLM.compile`) on the tiny Janus-Pro checkpoint.

torch.compile's kernels round differently from eager ones (fused reductions), so the
compiled step is held to eager within float tolerance, not to the bit; what it must
never do is recompile as rows join and leave, or fail on any row count or length.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from service.models import runners  # noqa: E402
from service.models.base import GenerateRequest, GenerateResult  # noqa: E402
from service.models.engine import run_to_completion  # noqa: E402
from tests.helpers import Control  # noqa: E402

REQUESTS = [
    GenerateRequest("a red cat", seed=1, temperature=0.0),
    GenerateRequest("a much longer prompt about a lighthouse on a cliff", seed=2, num_images=2),
    GenerateRequest("x", seed=3, guidance=1.0),
]


@pytest.fixture(scope="module")
def compiled(tiny_checkpoint: str):
    return runners.load_runner(tiny_checkpoint, device="cpu", compile=True)


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
    # One dynamic graph per piece for every row count and length (dynamo may add one
    # per piece for a single row).
    assert 0 < counters["stats"]["unique_graphs"] <= 4


def test_compiled_engine_runs_jobs_to_the_end(compiled) -> None:
    results = run_to_completion(compiled.open_engine("generate", 3), REQUESTS, Control())
    assert all(isinstance(r, GenerateResult) for r in results), results
    assert [len(r.images) for r in results] == [1, 2, 1]
