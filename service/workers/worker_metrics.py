"""Prometheus metrics of one worker process, served by `janus-service worker --metrics-port`.

A worker is one process with one model, so plain in-process metrics are right here
(the API's multiprocess files are a gunicorn concern). The loop calls `record_row` when a
job leaves the engine and the job handler `record_finish` for each terminal state; the
worker calls `record_load` and `serve`. Every series carries `model`, so one
Prometheus query can sum the workers of a model across GPUs and hosts.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

# A registry of our own: the worker's endpoint shows these and the process' CPU and
# memory, and nothing an imported library happens to register globally.
REGISTRY = CollectorRegistry()
ProcessCollector(registry=REGISTRY)

JOBS = Counter(
    "janus_worker_jobs_total",
    "Jobs this worker brought to a terminal state (dropped: another worker owned it by then)",
    ["model", "status"],
    registry=REGISTRY,
)
BATCH_SIZE = Histogram(
    "janus_worker_batch_size",
    "Jobs in the engine's step when a job left it",
    ["model", "task"],
    buckets=(1, 2, 4, 8, 16, 32, 64),
    registry=REGISTRY,
)
JOB_RUN_SECONDS = Histogram(
    "janus_worker_job_run_seconds",
    "Wall time of each job in the engine, from admission to its result",
    ["model", "task"],
    buckets=(0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1800),
    registry=REGISTRY,
)
STEP_SECONDS = Histogram(
    "janus_worker_decode_step_seconds",
    "Time of one decode (or flow) step, when the runner reports step_seconds in its stats",
    ["model", "task"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28),
    registry=REGISTRY,
)
TOKENS = Counter(
    "janus_worker_tokens_total",
    "Tokens generated, from the runner's stats (kind: image or text)",
    ["model", "kind"],
    registry=REGISTRY,
)
LOAD_SECONDS = Gauge(
    "janus_worker_model_load_seconds",
    "Seconds the model took to load (read its weights onto the device) at worker start",
    ["model", "device"],
    registry=REGISTRY,
)
WARMUP_SECONDS = Gauge(
    "janus_worker_model_warmup_seconds",
    "Seconds the loaded model's warm-up took (a few steps of each engine, one decode)",
    ["model", "device"],
    registry=REGISTRY,
)


def record_load(model: str, device: str, load_seconds: float, warmup_seconds: float) -> None:
    LOAD_SECONDS.labels(model, device).set(load_seconds)
    WARMUP_SECONDS.labels(model, device).set(warmup_seconds)


def record_finish(model: str, status: str) -> None:
    JOBS.labels(model, status).inc()


def record_row(model: str, task: str, result: Any, elapsed: float, running: int) -> None:
    """One job left the continuous engine: `running` jobs shared its last step.

    The batch-size histogram then shows how full the engine was when jobs finished. Must
    never raise: a metrics bug cannot be allowed to lose a finished job."""
    try:
        BATCH_SIZE.labels(model, task).observe(running)
        JOB_RUN_SECONDS.labels(model, task).observe(elapsed)
        stats = getattr(result, "stats", None)
        if isinstance(stats, dict):
            _record_stats(model, task, stats)
    except Exception:
        log.exception("recording row metrics failed")


def _record_stats(model: str, task: str, stats: dict[str, Any]) -> None:
    steps = stats.get("step_seconds")
    # A runner may report one mean step time or every step's.
    for value in steps if isinstance(steps, list | tuple) else [steps]:
        if isinstance(value, int | float) and value >= 0:
            STEP_SECONDS.labels(model, task).observe(value)
    for key, kind in (("image_tokens", "image"), ("new_tokens", "text")):
        count = stats.get(key)
        if isinstance(count, int) and count > 0:
            TOKENS.labels(model, kind).inc(count)


class _GpuMemoryCollector(Collector):
    """GPU memory read at scrape time, so it is current without a polling thread."""

    def __init__(self, model: str, device: str) -> None:
        self.model, self.device = model, device

    def collect(self) -> Iterator[GaugeMetricFamily]:
        import torch  # already imported by the runner; never imported by the API

        family = GaugeMetricFamily(
            "janus_worker_gpu_memory_bytes",
            "CUDA memory of this worker's device (allocated, reserved, peak allocated)",
            labels=["model", "device", "kind"],
        )
        try:
            index = torch.device(self.device).index or 0
            readings = {
                "allocated": torch.cuda.memory_allocated(index),
                "reserved": torch.cuda.memory_reserved(index),
                "peak_allocated": torch.cuda.max_memory_allocated(index),
            }
        except Exception as exc:  # a scrape must not fail because the driver hiccuped
            log.warning("reading GPU memory failed: %s", exc)
            return
        for kind, value in readings.items():
            family.add_metric([self.model, self.device, kind], float(value))
        yield family


def watch_device(model: str, device: str) -> None:
    """Export GPU memory when the worker runs on CUDA (a CPU worker has none to show)."""
    if device.startswith("cuda"):
        REGISTRY.register(_GpuMemoryCollector(model, device))


def serve(port: int, addr: str = "0.0.0.0") -> None:
    """Serve /metrics on a daemon thread; raises OSError when the port is taken."""
    start_http_server(port, addr=addr, registry=REGISTRY)
    log.info("worker metrics on http://%s:%d/metrics", addr, port)
