"""The model server: our HTTP server (locally or on Cloud Run), or a Vertex AI endpoint."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Literal

from dagster import ConfigurableResource
from pydantic import Field

from batchinfer_dagster.clients.model_client import HttpModelClient, ModelClient
from batchinfer_protocol.zero_shot import (
    DEFAULT_HYPOTHESIS_TEMPLATE,
    DEFAULT_LABELS,
    DEFAULT_MAX_REQUEST_BYTES,
    PredictParameters,
)

if TYPE_CHECKING:
    from batchinfer_dagster.clients.vertex_model_client import VertexEndpoint


class ModelServerResource(ConfigurableResource, ABC):
    """Zero-shot predictions of texts; the parameters every request carries, and retry policy."""

    labels: list[str] = Field(
        default=list(DEFAULT_LABELS), min_length=1, description="Candidate labels."
    )
    multi_label: bool = Field(default=False)
    hypothesis_template: str = Field(default=DEFAULT_HYPOTHESIS_TEMPLATE)
    timeout_seconds: float = Field(default=120.0, gt=0, description="Per request.")
    chunk_size: int = Field(default=256, ge=1, description="Texts per request (client chunk).")
    retries: int = Field(
        default=3,
        ge=0,
        description="Step retries of a predictions run after a transient model error "
        "(server down, 5xx, timeout). A 4xx is never retried.",
    )
    retry_delay_seconds: float = Field(
        default=5.0, ge=0, description="Wait before the first retry; doubles each retry."
    )

    def parameters(self) -> PredictParameters:
        return PredictParameters(tuple(self.labels), self.multi_label, self.hypothesis_template)

    @abstractmethod
    def client(self) -> ModelClient:
        """A new client; the caller closes it (``open`` does)."""

    @contextmanager
    def open(self) -> Iterator[ModelClient]:
        client = self.client()
        try:
            yield client
        finally:
            client.close()


class HttpModelServer(ModelServerResource):
    """Our model server's ``POST /predict``: a local process, or a Cloud Run service."""

    url: str = Field(description="Base URL (BATCHINFER_MODEL_URL), e.g. http://127.0.0.1:8080.")
    auth: Literal["none", "google-id-token"] = Field(
        default="none",
        description="google-id-token: a private Cloud Run service that only its invokers call.",
    )
    max_request_bytes: int = Field(
        default=DEFAULT_MAX_REQUEST_BYTES,
        ge=1024,
        description="Bytes per request body (the server's MODEL_MAX_BODY_BYTES); a text too "
        "large alone is dead-lettered without sending it.",
    )

    def client(self) -> ModelClient:
        auth = None
        if self.auth == "google-id-token":
            from batchinfer_dagster.clients.google_id_token import GoogleIdTokenAuth

            auth = GoogleIdTokenAuth(self.url)
        return HttpModelClient(
            self.url,
            timeout=self.timeout_seconds,
            chunk_size=self.chunk_size,
            auth=auth,
            max_request_bytes=self.max_request_bytes,
        )


class VertexModelEndpoint(ModelServerResource):
    """A Vertex AI endpoint serving our model-server image (``vertex://projects/…``)."""

    url: str = Field(
        description="vertex://projects/P/locations/L/endpoints/E (BATCHINFER_MODEL_URL)."
    )
    api_endpoint: str | None = Field(
        default=None,
        description="host:port of the prediction API (BATCHINFER_VERTEX_PREDICTION_ENDPOINT).",
    )
    max_request_bytes: int = Field(
        default=DEFAULT_MAX_REQUEST_BYTES, ge=1024, description="BATCHINFER_MODEL_MAX_REQUEST_BYTES"
    )

    def endpoint(self) -> VertexEndpoint:
        from batchinfer_dagster.clients.vertex_model_client import VertexEndpoint

        return VertexEndpoint(
            url=self.url,
            api_endpoint=self.api_endpoint,
            timeout_seconds=self.timeout_seconds,
            chunk_size=self.chunk_size,
            max_request_bytes=self.max_request_bytes,
        )

    def client(self) -> ModelClient:
        from batchinfer_dagster.clients.vertex_model_client import VertexModelClient

        return VertexModelClient(self.endpoint())
