"""A job's output depends on its own inputs and seed only, not on the jobs beside it or its
slot in the batch, on the CPU kernels CI machines differ by.

Each case runs in a fresh process with MKL and ATen held to their AVX2 code paths (where
batched matrix products were seen to round differently by batch size: one pixel level off
between two identical JanusFlow rows) as well as with the machine's own kernels, at 1 and at
2 threads. In the batch-invariant mode (JanusFlow's CPU default) the two thread counts must
agree as well; Janus-Pro's default (batched products) promises nothing across them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import STRICT_MKL

pytest.importorskip("torch")

REPO = Path(__file__).resolve().parents[1]
AVX2 = {"MKL_ENABLE_INSTRUCTIONS": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}


def _digests(family: str, checkpoint: str, threads: int, kernels: dict[str, str]) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in AVX2}
    env.update(kernels, **STRICT_MKL, OMP_NUM_THREADS=str(threads))
    out = subprocess.run(
        [sys.executable, "-m", "tests.invariance_probe", family, checkpoint, str(threads)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=280,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("family", ["janus-pro", "janusflow"])
@pytest.mark.parametrize("kernels", [AVX2, {}], ids=["avx2", "native"])
def test_a_job_is_the_same_alone_and_in_any_batch_and_slot(
    family: str, kernels: dict, tiny_checkpoint: str, flow_checkpoint: str
) -> None:
    checkpoint = flow_checkpoint if family == "janusflow" else tiny_checkpoint
    runs = [_digests(family, checkpoint, threads, kernels) for threads in (1, 2)]
    for run in runs:
        for seed in (7, 8):
            alone = run[f"s{seed}-alone"]
            batched = {k: v for k, v in run.items() if k.startswith(f"s{seed}-b")}
            assert set(batched.values()) == {alone}, (seed, batched, alone)
        assert run["text-b5@2"] == run["text-alone"]
    assert runs[0]["s7-alone"] != runs[0]["s8-alone"]  # seeds do matter
    if family == "janusflow":  # invariant by default on a CPU: thread counts agree too
        assert runs[0] == runs[1]


def test_the_mode_wraps_each_module_once_and_undoes_cleanly() -> None:
    import torch
    from torch import nn

    from service.models.invariance import make_batch_invariant, undo_batch_invariant

    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.GELU(), nn.Flatten(), nn.LazyLinear(5))
    x = torch.randn(6, 3, 9, 9, generator=torch.Generator().manual_seed(0))
    batched = model(x)
    assert make_batch_invariant(model) == 3 and make_batch_invariant(model) == 3
    rows = model(x)
    # By construction: a row inside the batch is computed exactly as when it is alone.
    assert all(torch.equal(rows[i], model(x[i : i + 1])[0]) for i in range(6))
    torch.testing.assert_close(rows, batched)
    undo_batch_invariant(model)
    assert all("_batched_forward" not in vars(m) for m in model.modules())
    assert torch.equal(model(x), batched)
