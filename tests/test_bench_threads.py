"""bench/threads.py --quick: the thread-count check runs its fresh processes at 1 and 2
threads and prints its table, so it cannot rot. Whether the bits agree is what it measures,
not what this asserts (nothing guarantees it; README, "Reproducibility")."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.timeout(600)
def test_threads_benchmark_quick() -> None:
    done = subprocess.run(
        [sys.executable, "bench/threads.py", "--quick"],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = [line.split("|") for line in done.stdout.splitlines() if "seeds" in line]
    assert [(r[0].strip(), r[1].strip()) for r in rows] == [
        ("janus-pro", "batched"), ("janus-pro", "+ no oneDNN")]
    for row in rows:
        assert re.fullmatch(r"0x[0-9a-f]+|no MKL", row[3].strip())
        assert re.fullmatch(r"[0-4]/4 seeds", row[4].strip())
