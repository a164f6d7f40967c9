"""bench/serve.py --quick: the serving benchmark (static vs continuous, Postgres, the worker's
real job path) runs end to end and prints its table and summary line, so it cannot rot."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.timeout(600)
@pytest.mark.parametrize("family", ["janus-pro", "janusflow"])
def test_serve_benchmark_quick(family: str, pg_url: str) -> None:
    admin = os.environ.get("TEST_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "bench/serve.py", "--family", family, "--quick", "--pg-admin", admin],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    rows = [line for line in lines if re.match(r"^\s*0\.[369] \|", line)]
    assert [r.split("|")[2].strip() for r in rows] == ["static", "continuous"] * 3
    assert re.fullmatch(
        r"p50_latency_ratio_static_vs_continuous=\d+\.\d+ throughput_ratio=\d+\.\d+", lines[-1]
    )
