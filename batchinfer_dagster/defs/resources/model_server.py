"""The model server: our HTTP server (locally or on Cloud Run), or a Vertex AI endpoint."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Literal

from dagster import ConfigurableResource
from pydantic import Field

from batchinfer_dagster.clients.model_client import (
    HttpModelClient,
    HttpModelClientConfig,
    ModelClient,
)
from batchinfer_dagster.settings import VERTEX_SCHEME, described, variable_of
from batchinfer_protocol.zero_shot import PredictParameters

if TYPE_CHECKING:
    from batchinfer_dagster.clients.vertex_model_client import VertexEndpoint


class ModelServerResource(ConfigurableResource, ABC):
    """Zero-shot predictions of texts; the parameters every request carries, and retry policy.

    Every field is required: ``deployments.py`` fills them from ``Settings``, which alone holds
    their defaults and bounds; the descriptions are the settings' own.
    """

    labels: list[str] = Field(description=described("labels"))
    multi_label: bool = Field(description=described("multi_label"))
    hypothesis_template: str | None = Field(description=described("hypothesis_template"))
    label_descriptions: dict[str, list[str]] = Field(
        description="{label: [description, ...]} read from "
        f"{variable_of('label_descriptions_file')}; empty: classify by the label names."
    )
    timeout_seconds: float = Field(description=described("model_timeout_seconds"))
    chunk_size: int = Field(description=described("model_chunk_size"))
    max_request_bytes: int = Field(description=described("model_max_request_bytes"))
    retries: int = Field(description=described("model_retries"))
    retry_delay_seconds: float = Field(description=described("model_retry_delay_seconds"))

    def parameters(self) -> PredictParameters:
        return PredictParameters(
            tuple(self.labels),
            self.multi_label,
            self.hypothesis_template,
            {label: tuple(texts) for label, texts in self.label_descriptions.items()},
        )

    @abstractmethod
    def client(self, url: str | None = None) -> ModelClient:
        """A new client of this server, or of another server at ``url`` with the same timeouts,
        chunking and auth; the caller closes it (``open`` does).

        ``url`` is a rollout's candidate server (``rollouts.model_url``): the resource is keyed
        by URL rather than declared twice, so a rollout against another model needs no new
        setting nor a restart of the code location, and every other field stays the one
        ``Settings`` declared. A URL of the other kind (``vertex://`` for an HTTP server, or
        the reverse) raises ``ValueError``: its client takes other fields.
        """

    @contextmanager
    def open(self, url: str | None = None) -> Iterator[ModelClient]:
        client = self.client(url)
        try:
            yield client
        finally:
            client.close()


class HttpModelServer(ModelServerResource):
    """Our model server's ``POST /predict``: a local process, or a Cloud Run service."""

    url: str = Field(description=described("model_url"))
    auth: Literal["none", "google-id-token"] = Field(description=described("model_auth"))

    def config(self, url: str | None = None) -> HttpModelClientConfig:
        """The client's config: this resource's fields, in the one object the client takes."""
        if url is not None and url.startswith(VERTEX_SCHEME):
            raise ValueError(
                f"{url!r} is a Vertex AI endpoint, the deployment's model server is HTTP "
                f"({self.url}); a rollout's candidate must be served the same way"
            )
        return HttpModelClientConfig(
            url=url or self.url,
            timeout_seconds=self.timeout_seconds,
            chunk_size=self.chunk_size,
            max_request_bytes=self.max_request_bytes,
        )

    def client(self, url: str | None = None) -> ModelClient:
        config = self.config(url)
        auth = None
        if self.auth == "google-id-token":
            from batchinfer_dagster.clients.google_id_token import GoogleIdTokenAuth

            auth = GoogleIdTokenAuth(config.url)
        return HttpModelClient(config, auth=auth)


class VertexModelEndpoint(ModelServerResource):
    """A Vertex AI endpoint serving our model-server image (``vertex://projects/…``)."""

    url: str = Field(description=described("model_url"))
    api_endpoint: str | None = Field(description=described("vertex_prediction_endpoint"))

    def endpoint(self, url: str | None = None) -> VertexEndpoint:
        """The client's config: this resource's fields, in the one object the client takes."""
        from batchinfer_dagster.clients.vertex_model_client import VertexEndpoint

        if url is not None and not url.startswith(VERTEX_SCHEME):
            raise ValueError(
                f"{url!r} is not a Vertex AI endpoint ({VERTEX_SCHEME}…), the deployment's "
                "model server is one; a rollout's candidate must be served the same way"
            )
        return VertexEndpoint(
            url=url or self.url,
            api_endpoint=self.api_endpoint,
            timeout_seconds=self.timeout_seconds,
            chunk_size=self.chunk_size,
            max_request_bytes=self.max_request_bytes,
        )

    def client(self, url: str | None = None) -> ModelClient:
        from batchinfer_dagster.clients.vertex_model_client import VertexModelClient

        return VertexModelClient(self.endpoint(url))
