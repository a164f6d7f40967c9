"""Continuous batching keeps seeds: a job's tokens, text and pixels are the same alone and
joining crowds of 3 or 5 at different steps and slots (with a neighbour leaving mid-run),
in batch-invariant mode; and the same as a batch run to completion (`run_batch`), and the
same at 1 and at 2 threads. Both families, both tasks: generation and understanding.

Each thread count runs in a fresh process (tests/engine_probe.py). Tiny models: at real
shapes the same held op for op (bench/RESULTS.md, "Thread counts"), and README,
"Reproducibility", says what holds beyond that."""

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


def _digests(family: str, checkpoint: str, threads: int) -> dict:
    env = {**os.environ, **STRICT_MKL, "OMP_NUM_THREADS": str(threads)}
    out = subprocess.run(
        [sys.executable, "-m", "tests.engine_probe", family, checkpoint, str(threads)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.timeout(900)
@pytest.mark.parametrize("family", ["janus-pro", "janusflow"])
def test_a_job_is_the_same_alone_and_joining_any_crowd_at_any_step_at_any_thread_count(
    family: str, tiny_checkpoint: str, flow_checkpoint: str
) -> None:
    checkpoint = flow_checkpoint if family == "janusflow" else tiny_checkpoint
    runs = [_digests(family, checkpoint, threads) for threads in (1, 2)]
    for run in runs:
        for seed in (7, 8):
            alone = run[f"s{seed}-alone"]
            crowds = {k: v for k, v in run.items() if k.startswith(f"s{seed}-b")}
            assert len(crowds) == 8
            assert set(crowds.values()) == {alone}, (seed, crowds, alone)
            assert run[f"s{seed}-completion"] == alone  # the run-to-completion path agrees
        assert run["s7-alone"] != run["s8-alone"]
        assert run["text-b5-j1@2"] == run["text-alone"] == run["text-completion"]
    # On a CPU the mode also avoids the kernels that round by thread count.
    assert runs[0] == runs[1]
