"""Prometheus metrics for the API: request counters, latencies, and job gauges read at scrape.

Under gunicorn each worker process counts only the requests it served. With
PROMETHEUS_MULTIPROC_DIR set (service/entry/server.py sets it) counters and histograms
are written to per-process files there and every scrape sums them, whichever
worker answers. The job gauges need no sharing: they are read from the database
and broker at each scrape.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, values
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from service.lifecycle.status import STATUSES

log = logging.getLogger(__name__)


def multiprocess_dir() -> str | None:
    """The shared metrics directory, when multiprocess mode is on and can work."""
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not path:
        return None
    if values.ValueClass is values.MutexValue:
        # prometheus_client picks file-backed values when it is first imported; imported
        # before the variable was set, it keeps values in memory and the files stay empty.
        log.warning("PROMETHEUS_MULTIPROC_DIR was set too late; /metrics shows one process")
        return None
    return path


class ApiMetrics:
    def __init__(self) -> None:
        # What /metrics serves. In multiprocess mode the counters are not registered in
        # it: their values live in files, and the collector reads every process' files.
        self.registry = CollectorRegistry()
        shared = multiprocess_dir()
        if shared:
            MultiProcessCollector(self.registry, path=shared)
        own = None if shared else self.registry
        self.requests = Counter(
            "janus_http_requests_total",
            "HTTP requests",
            ["method", "route", "status"],
            registry=own,
        )
        self.latency = Histogram(
            "janus_http_request_seconds",
            "HTTP request latency",
            ["method", "route"],
            registry=own,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
        )

    def observe(self, method: str, route: str, status: int, started: float) -> None:
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(method, route).observe(time.perf_counter() - started)

    def add_job_collector(
        self,
        counts: Callable[[], dict[tuple[str, str], int]],
        depths: Callable[[], dict[str, int | None]],
        models: Callable[[], list[str]],
    ) -> None:
        self.registry.register(_JobCollector(counts, depths, models))


class _JobCollector(Collector):
    """Reads the database and broker at scrape time, so every API process agrees."""

    def __init__(self, counts: Callable[[], dict[tuple[str, str], int]],
                 depths: Callable[[], dict[str, int | None]],
                 models: Callable[[], list[str]]) -> None:
        self.counts, self.depths, self.models = counts, depths, models

    def collect(self) -> Iterator[GaugeMetricFamily]:
        jobs = GaugeMetricFamily(
            "janus_jobs", "Jobs by model and status", labels=["model", "status"]
        )
        counts = self.counts()
        for model in sorted(set(self.models()) | {m for m, _ in counts}):
            for status in STATUSES:
                jobs.add_metric([model, status], counts.get((model, status), 0))
        yield jobs
        depth = GaugeMetricFamily(
            "janus_queue_depth", "Messages waiting in the broker per model", labels=["model"]
        )
        for model, value in self.depths().items():
            if value is not None:
                depth.add_metric([model], value)
        yield depth


class _WebhookCollector(Collector):
    """Webhook outcomes from the outbox, read at scrape time like the job gauges."""

    def __init__(self, counts: Callable[[], dict[tuple[str, str], int]]) -> None:
        self.counts = counts

    def collect(self) -> Iterator[GaugeMetricFamily]:
        events = GaugeMetricFamily(
            "janus_webhook_events",
            "Webhook events by type and delivery status (pending, delivering, succeeded, failed)",
            labels=["type", "status"],
        )
        for (event_type, status), n in sorted(self.counts().items()):
            events.add_metric([event_type, status], n)
        yield events


def add_webhook_collector(
    metrics: ApiMetrics, counts: Callable[[], dict[tuple[str, str], int]]
) -> None:
    metrics.registry.register(_WebhookCollector(counts))


class _RunTimeCollector(Collector):
    """Succeeded jobs' run time per model and task, from the jobs table at scrape time."""

    def __init__(
        self, read: Callable[[], dict[tuple[str, str], list[float]]], buckets: tuple[float, ...]
    ) -> None:
        self.read, self.buckets = read, buckets

    def collect(self) -> Iterator[HistogramMetricFamily]:
        family = HistogramMetricFamily(
            "janus_job_run_seconds", "Run time of succeeded jobs", labels=["model", "task"]
        )
        for (model, task), row in sorted(self.read().items()):
            counts, total, count = row[: len(self.buckets)], row[-2], row[-1]
            buckets = [(str(b), c) for b, c in zip(self.buckets, counts, strict=True)]
            family.add_metric([model, task], buckets + [("+Inf", count)], total)
        yield family


def add_run_time_collector(
    metrics: ApiMetrics,
    read: Callable[[], dict[tuple[str, str], list[float]]],
    buckets: tuple[float, ...],
) -> None:
    metrics.registry.register(_RunTimeCollector(read, buckets))
