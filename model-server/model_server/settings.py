"""The model server's one configuration object, read from the environment.

Field names are the environment variable names in lower case, so `AIP_HTTP_PORT` is
`aip_http_port`: what an operator sets is what a reader of the code searches for.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from batchinfer_protocol.predict_request import RequestLimits
from batchinfer_protocol.zero_shot import (
    DEFAULT_HYPOTHESIS_TEMPLATE,
    DEFAULT_LABELS,
    DEFAULT_MAX_INSTANCES,
    DEFAULT_MAX_LABELS,
    DEFAULT_MAX_REQUEST_BYTES,
)
from model_server.connection_guard import EdgeLimits
from model_server.runtime import ForwardOptions


class ServerSettings(BaseSettings):
    """Everything the model server can be told, with its embedded defaults (docs/model-server.md,
    "Settings"). The one place a MODEL_* or AIP_* default or bound is written: the classes it
    builds (``ForwardOptions``, ``EdgeLimits``, ``RequestLimits``) and the backends take
    required values (tests/model_server/test_no_restated_defaults.py)."""

    model_config = SettingsConfigDict(protected_namespaces=(), extra="ignore")

    aip_http_port: int = Field(8080, ge=1, le=65535)
    aip_predict_route: str = "/predict"
    aip_health_route: str = "/health"
    aip_storage_uri: str | None = None
    # Loopback by default: an unauthenticated server must not face the local network of a laptop.
    # Containers (Cloud Run, Vertex AI) set MODEL_HOST=0.0.0.0 in their Dockerfile.
    model_host: str = "127.0.0.1"

    model_backend: Literal["embedding", "nli"] = "embedding"
    model_name_or_path: str | None = None
    model_device: Literal["auto", "cpu", "cuda"] = "auto"
    # auto: float16 on CUDA (chosen by agreement with fp32: runtime.resolve_dtype), fp32 on CPU.
    model_dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    model_fp16: bool = False  # older spelling of MODEL_DTYPE=float16
    model_runtime: Literal["torch", "onnxruntime"] = "torch"
    model_compile: bool = False
    # CUDA graphs of every warmed shape (runtime.ForwardOptions.cuda_graphs); off until
    # bench/bench_gpu.py has measured them on a GPU. Nothing changes on CPU.
    model_cuda_graphs: bool = False
    model_warmup: bool = True
    # auto: every shape on CUDA, the plan's two ends on CPU (runtime.ForwardOptions).
    model_warmup_shapes: Literal["auto", "all", "ends"] = "auto"
    model_cache_dir: str = "/tmp/model_server_cache"

    model_max_batch_size: int = Field(64, ge=1)
    model_max_batch_tokens: int = Field(0, ge=0)  # 0: by device, 1,024 on CPU, 32,768 on CUDA
    model_pad_to_multiple_of: int = Field(0, ge=0)
    model_batch_pool_rows: int = Field(1024, ge=1)
    # 5 ms: long enough for the instances of requests sent together to share one pool (one
    # shape plan, less padding); at 2 ms a second request parsed just after missed it.
    model_batch_wait_ms: float = Field(5.0, ge=0)
    model_max_instances: int = Field(DEFAULT_MAX_INSTANCES, ge=1)
    model_max_body_bytes: int = Field(DEFAULT_MAX_REQUEST_BYTES, ge=1)
    model_max_labels: int = Field(DEFAULT_MAX_LABELS, ge=1)
    # What the model reads of a candidate label: its first this many characters, cut before any
    # template is formatted. A label is a name (sentences go in its descriptions, 1,000 each); 200
    # characters are ~45 tokens: the embedding backend reads 64 such labels in 10 templates as
    # 31k tokens, at 1,000 characters as 124k (the most a 256-token window lets through: 164k).
    model_max_label_chars: int = Field(200, ge=1)

    # The HTTP edge (model_server/connection_guard.py): what a slow client may hold.
    # Connections at once; past it the one that waited longest for its headers is closed. Each
    # takes a file descriptor: the server raises its soft limit to fit (or refuses to start).
    model_max_connections: int = Field(512, ge=1)
    # From a connection (or its previous response) to the end of a request's headers.
    model_header_timeout_seconds: float = Field(10.0, gt=0)
    model_max_header_bytes: int = Field(64 * 1024, ge=1024)
    # From the end of the headers to the end of the body: 408 past it. 60 s for the 10 MiB the
    # body may hold is a client sending at least 175 KB/s. A response the client does not read
    # has as long, from when it outgrows the transport's buffer; then the connection is aborted.
    model_body_timeout_seconds: float = Field(60.0, gt=0)
    # Bytes of request bodies held at once, all connections together (body_budget.py): past it a
    # request is answered 429 with Retry-After before its body is read. 64 MiB: six bodies at
    # the 10 MiB limit, or thousands of the pipeline's usual few-KB chunks.
    model_body_budget_bytes: int = Field(64 * 1024 * 1024, ge=1)
    # Parsed instances waiting for the model, all requests together (batching.py): past it a
    # request is answered 429 with Retry-After before any of its instances is queued. 16 requests
    # at the 1,000-instance limit; the pipeline keeps a few chunks of 64 texts in flight per run.
    model_max_queued_instances: int = Field(16 * DEFAULT_MAX_INSTANCES, ge=1)

    model_default_labels: str = ",".join(DEFAULT_LABELS)
    model_default_template: str = DEFAULT_HYPOTHESIS_TEMPLATE
    model_embedding_temperature: float = Field(0.05, gt=0)
    model_torch_threads: int = Field(0, ge=0)
    # glibc keeps freed memory instead of unmapping it (see memory_allocator).
    model_keep_freed_memory: bool = True
    model_log_level: str = "info"

    @field_validator("aip_predict_route", "aip_health_route")
    @classmethod
    def _route_starts_with_slash(cls, route: str) -> str:
        if not route.startswith("/"):
            raise ValueError(f"a route must start with '/', got {route!r}")
        return route

    @model_validator(mode="after")
    def _pool_holds_a_batch(self) -> ServerSettings:
        if self.model_batch_pool_rows < self.model_max_batch_size:
            raise ValueError(
                f"MODEL_BATCH_POOL_ROWS={self.model_batch_pool_rows} is smaller than "
                f"MODEL_MAX_BATCH_SIZE={self.model_max_batch_size}; make it at least as large"
            )
        return self

    @model_validator(mode="after")
    def _budget_holds_a_body(self) -> ServerSettings:
        if self.model_body_budget_bytes < self.model_max_body_bytes:
            raise ValueError(
                f"MODEL_BODY_BUDGET_BYTES={self.model_body_budget_bytes} is smaller than "
                f"MODEL_MAX_BODY_BYTES={self.model_max_body_bytes}: a body at the limit could "
                "never be read; make it at least as large"
            )
        return self

    @model_validator(mode="after")
    def _queue_holds_a_request(self) -> ServerSettings:
        if self.model_max_queued_instances < self.model_max_instances:
            raise ValueError(
                f"MODEL_MAX_QUEUED_INSTANCES={self.model_max_queued_instances} is smaller than "
                f"MODEL_MAX_INSTANCES={self.model_max_instances}: a request at the limit could "
                "never be queued; make it at least as large"
            )
        return self

    @model_validator(mode="after")
    def _one_dtype(self) -> ServerSettings:
        if self.model_fp16 and self.model_dtype not in ("auto", "float16"):
            raise ValueError(
                f"MODEL_FP16=true contradicts MODEL_DTYPE={self.model_dtype}; unset MODEL_FP16"
            )
        return self

    @classmethod
    def declared(cls) -> ServerSettings:
        """The declared defaults alone, the environment ignored: what tests and benchmarks
        start from (``ServerSettings.declared().forward_options``), so that no other module
        restates a default."""
        return cls.model_construct()

    @property
    def forward_options(self) -> ForwardOptions:
        """How the backend runs its forward passes."""
        return ForwardOptions(
            max_batch_size=self.model_max_batch_size,
            max_batch_tokens=self.model_max_batch_tokens,
            pad_to_multiple_of=self.model_pad_to_multiple_of,
            dtype="float16" if self.model_fp16 else self.model_dtype,
            runtime=self.model_runtime,
            compile=self.model_compile,
            cuda_graphs=self.model_cuda_graphs,
            warm_up=self.model_warmup,
            warm_up_shapes=self.model_warmup_shapes,
            cache_dir=self.model_cache_dir,
            threads=self.model_torch_threads,
        )

    @property
    def edge_limits(self) -> EdgeLimits:
        """The bounds the HTTP protocol keeps on connections and request headers."""
        return EdgeLimits(
            max_connections=self.model_max_connections,
            header_timeout_seconds=self.model_header_timeout_seconds,
            max_header_bytes=self.model_max_header_bytes,
            send_timeout_seconds=self.model_body_timeout_seconds,
        )

    @property
    def default_labels(self) -> list[str]:
        """The candidate labels used when a request names none."""
        return [label.strip() for label in self.model_default_labels.split(",") if label.strip()]

    @property
    def request_limits(self) -> RequestLimits:
        """What the protocol's request decoding accepts, and its labels for a request without."""
        return RequestLimits(
            max_instances=self.model_max_instances,
            max_labels=self.model_max_labels,
            default_labels=tuple(self.default_labels),
        )
