"""Prometheus metrics of one server, in a registry of its own so that apps never share them."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class ServerMetrics:
    """Requests, instances, batch sizes, latencies and queue depth."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "model_server_requests",
            "HTTP requests by route and status code.",
            ["route", "status"],
            registry=self.registry,
        )
        self.instances = Counter(
            "model_server_instances", "Instances predicted.", registry=self.registry
        )
        self.request_seconds = Histogram(
            "model_server_request_seconds",
            "Time from receiving a /predict request to answering it.",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_seconds = Histogram(
            "model_server_batch_seconds",
            "Time the model took for one batch.",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_instances = Histogram(
            "model_server_batch_instances",
            "Instances per model batch.",
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.batch_rows = Histogram(
            "model_server_batch_rows",
            "Model rows per batch (text-label pairs for nli, texts for embedding).",
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "model_server_queue_depth",
            "Instances waiting for a batch.",
            registry=self.registry,
        )

    def observe_batch(self, instances: int, rows: int, seconds: float) -> None:
        self.batch_instances.observe(instances)
        self.batch_rows.observe(rows)
        self.batch_seconds.observe(seconds)
