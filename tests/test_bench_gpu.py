"""bench/gpu.sh's CPU dry run: the script a lent GPU runs first must not rot between loans."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.timeout(900)  # the script bounds itself; the suite default is 300 s
def test_gpu_script_dry_run_on_cpu(tmp_path: Path) -> None:
    env = {**os.environ, "OUT": str(tmp_path), "PY": sys.executable, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        ["bash", "bench/gpu.sh", "--dry-run"], cwd=REPO, env=env,
        capture_output=True, text=True, timeout=900,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "gpu_sh_failed_steps=0"
    checks = (tmp_path / "checks.txt").read_text()
    assert "checks_failed=0" in checks and "| oom-split/janus-pro | pass |" in checks
    generate = (tmp_path / "janus-pro-small.txt").read_text()
    assert "speedup_batched_vs_transformers=" in generate
    assert generate.strip().splitlines()[-1].startswith("compiled_step_speedup=")
    serve = (tmp_path / "serve-janus-pro.txt").read_text()
    assert serve.strip().splitlines()[-1].startswith("p50_latency_ratio_static_vs_continuous=")
    assert "| continuous/janus-pro | pass |" in checks
    assert "| understand/janus-pro | pass |" in checks
    assert "| deferred/janus-pro | pass |" in checks
    assert "torch" in (tmp_path / "env.txt").read_text()
    if (tmp_path / "janusflow-small.txt").exists():  # diffusers is a models extra: it is
        assert "max_invariance_cost=" in (tmp_path / "invariance.txt").read_text()
        assert "| understand/janusflow | pass |" in checks
        assert "| deferred/janusflow | pass |" in checks
