"""bench/op_diff.py on the tiny checkpoints: in batch-invariant mode every floating-point
result of a generation, op by op, is the same at 1 and at 3 threads (3: the count at which
GroupNorm's channels-last kernel and the elementwise split were seen to differ)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import STRICT_MKL

pytest.importorskip("torch")

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.timeout(600)
@pytest.mark.parametrize("family", ["janus-pro", "janusflow"])
def test_every_op_agrees_across_thread_counts(family: str) -> None:
    out = subprocess.run(
        [sys.executable, "bench/op_diff.py", "--family", family, "--shape", "tiny",
         "--threads", "1,3"],
        cwd=REPO, env={**os.environ, **STRICT_MKL}, capture_output=True, text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    line = out.stdout.strip().splitlines()[-1]
    assert line.startswith(f"op_diff: {family} tiny seed 7, 1 vs 3 threads: all "), line
    assert line.endswith(" op results identical") and int(line.split()[-4]) > 1000, line
