"""The model server's one configuration object, read from the environment.

Field names are the environment variable names in lower case, so `AIP_HTTP_PORT` is
`aip_http_port`: what an operator sets is what a reader of the code searches for.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from batchinfer_protocol.zero_shot import (
    DEFAULT_HYPOTHESIS_TEMPLATE,
    DEFAULT_LABELS,
    DEFAULT_MAX_INSTANCES,
    DEFAULT_MAX_LABELS,
    DEFAULT_MAX_REQUEST_BYTES,
)


class ServerSettings(BaseSettings):
    """Everything the model server can be told, with the embedded defaults of design.md §4."""

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
    model_fp16: bool = False
    model_cache_dir: str = "/tmp/model_server_cache"

    model_max_batch_size: int = Field(32, ge=1)
    model_batch_pool_rows: int = Field(1024, ge=1)
    model_batch_wait_ms: float = Field(2.0, ge=0)
    model_max_instances: int = Field(DEFAULT_MAX_INSTANCES, ge=1)
    model_max_body_bytes: int = Field(DEFAULT_MAX_REQUEST_BYTES, ge=1)
    model_max_labels: int = Field(DEFAULT_MAX_LABELS, ge=1)

    model_default_labels: str = ",".join(DEFAULT_LABELS)
    model_default_template: str = DEFAULT_HYPOTHESIS_TEMPLATE
    model_embedding_temperature: float = Field(0.05, gt=0)
    model_torch_threads: int = Field(0, ge=0)
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

    @property
    def default_labels(self) -> list[str]:
        """The candidate labels used when a request names none."""
        return [label.strip() for label in self.model_default_labels.split(",") if label.strip()]
