"""Prometheus metrics of one server, in a registry of its own so that apps never share them."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
TOKEN_BUCKETS = (64, 256, 1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072)


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
        self.prepare_seconds = Histogram(
            "model_server_prepare_seconds",
            "Time tokenizing and padding one pool took (in the tokenizer thread, overlapped "
            "with the model computing the previous pool).",
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
        self.unwarmed_shapes = Counter(
            "model_server_unwarmed_shapes",
            "Forward-pass tensor shapes (rows, padded length) first seen after the warm-up; each "
            "costs first-use kernel selection on a GPU. Stays 0 when the warm-up covers every "
            "shape the batch planner can make.",
            registry=self.registry,
        )
        self.warmup_shapes = Gauge(
            "model_server_warmup_shapes",
            "Forward-pass shapes run by the warm-up at load.",
            registry=self.registry,
        )
        self.warmup_seconds = Gauge(
            "model_server_warmup_seconds",
            "Time the warm-up took at load.",
            registry=self.registry,
        )
        self.forward_tokens = Counter(
            "model_server_forward_tokens",
            "Tokens through forward passes: real ones, and padding (length buckets and rows "
            "repeated to fill a row bucket).",
            ["kind"],
            registry=self.registry,
        )
        self.forward_batch_tokens = Histogram(
            "model_server_forward_batch_tokens",
            "Padded tokens (rows x padded length) per forward pass; at most "
            "MODEL_MAX_BATCH_TOKENS unless one sequence is longer.",
            buckets=TOKEN_BUCKETS,
            registry=self.registry,
        )
        self.stage_seconds = Counter(
            "model_server_stage_seconds",
            "Seconds spent per server stage (tokenize, assemble, forward, postprocess; see "
            "model_server/stage_clock.py), by clock: cpu (the stage thread's own CPU time) or "
            "wall. Divided by model_server_instances_total: the cost of each stage per text.",
            ["stage", "clock"],
            registry=self.registry,
        )
        self.device_busy_seconds = Counter(
            "model_server_device_busy_seconds",
            "Seconds the device spent on forward batches (CUDA events on a GPU, the forward "
            "call's wall clock on CPU); its rate is the device's busy share.",
            registry=self.registry,
        )
        self.cuda_graphs = Gauge(
            "model_server_cuda_graphs",
            "CUDA graphs captured at the warm-up (MODEL_CUDA_GRAPHS), one per forward shape; "
            "shapes without one run eagerly.",
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "model_server_queue_depth",
            "Instances waiting for a batch.",
            registry=self.registry,
        )
        self.body_budget_held_bytes = Gauge(
            "model_server_body_budget_held_bytes",
            "Bytes of request bodies held now, against MODEL_BODY_BUDGET_BYTES (body_budget.py).",
            registry=self.registry,
        )

    def observe_batch(self, instances: int, rows: int, seconds: float) -> None:
        self.batch_instances.observe(instances)
        self.batch_rows.observe(rows)
        self.batch_seconds.observe(seconds)

    def observe_stage(self, stage: str, cpu_seconds: float, wall_seconds: float) -> None:
        self.stage_seconds.labels(stage, "cpu").inc(cpu_seconds)
        self.stage_seconds.labels(stage, "wall").inc(wall_seconds)

    def observe_forward(self, real_tokens: int, padded_tokens: int) -> None:
        self.forward_tokens.labels("real").inc(real_tokens)
        self.forward_tokens.labels("padding").inc(padded_tokens - real_tokens)
        self.forward_batch_tokens.observe(padded_tokens)
