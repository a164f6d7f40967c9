"""A few rows against a wide matrix: three ways to run the engine step's products on a CPU.

    python bench/products.py

For each [M x K] x [K x N] shape of the Janus-Pro step (the `small` benchmark shape and
Janus-Pro-1B's): `F.linear(x, W, b)` as the eager step runs it, the same product laid out
the other way round (`addmm(b, W, x.T).T`), and an `nn.Linear` compiled as `--compile`
compiles the heads (`service.models.compiling.frozen`: weights frozen into the graph,
max-autotune). Median microseconds of a call, float32, after warm calls. Then the
resident memory a frozen compile of the widest head adds. Last line:
`frozen_head_rss_mib=<delta> weight_mib=<size>`.
"""

from __future__ import annotations

import os
import statistics
import sys
import time

if __package__ in (None, ""):  # run as a script: make `service` importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SHAPES = [  # (M, K, N, what)
    (2, 256, 16384, "small image head, 1 guided job"),
    (8, 256, 16384, "small image head, 8 images"),
    (2, 256, 102400, "small text head"),
    (8, 256, 768, "small q/k/v, 8 rows"),
    (2, 2048, 16384, "1B image head, 1 guided job"),
    (8, 2048, 6144, "1B gate/up, 8 rows"),
]


def _us(fn, calls: int = 30) -> float:  # type: ignore[no-untyped-def]
    for _ in range(5):
        fn()
    times = []
    for _ in range(calls):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1e6


def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024
    return 0.0


def main() -> None:
    import torch
    import torch.nn.functional as F

    from bench.generate import _cpu_model, _load
    from service.models.compiling import frozen

    torch.manual_seed(0)
    print(f"# host {_cpu_model()}, {torch.get_num_threads()} threads, torch "
          f"{torch.__version__}, load average {_load()}")
    print("| [M x K] x [K x N] | what | F.linear us | W @ x.T us | frozen us |")
    print("|---|---|---|---|---|")
    with torch.inference_mode():
        for m, k, n, what in SHAPES:
            linear = torch.nn.Linear(k, n).eval()
            x = torch.randn(m, k)
            w, b = linear.weight, linear.bias
            eager = _us(lambda: F.linear(x, w, b))  # noqa: B023
            swapped = _us(lambda: torch.addmm(b[:, None], w, x.t()).t())  # noqa: B023
            compiled = frozen(linear, "cpu")
            fast = _us(lambda: compiled(x))  # noqa: B023
            print(f"| [{m} x {k}] x [{k} x {n}] | {what} | {eager:.0f} | {swapped:.0f} | "
                  f"{fast:.0f} |")
        weight = torch.nn.Linear(1024, 102400, bias=False).eval()
        x = torch.randn(2, 1024)
        weight(x)
        before = _rss_mib()
        compiled = frozen(weight, "cpu")
        compiled(x)
        compiled(torch.randn(3, 1024))
    size = weight.weight.numel() * 4 / 2**20
    print(f"frozen_head_rss_mib={_rss_mib() - before:.0f} weight_mib={size:.0f}")


if __name__ == "__main__":
    main()
