"""Prometheus metrics for the API: request counters, latencies, and job gauges read at scrape."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from service.tables import STATUSES


class ApiMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "janus_http_requests_total",
            "HTTP requests",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "janus_http_request_seconds",
            "HTTP request latency",
            ["method", "route"],
            registry=self.registry,
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

    def __init__(self, counts, depths, models) -> None:  # type: ignore[no-untyped-def]
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
