"""Clients of the model server: our HTTP server (or Cloud Run), or a Vertex AI endpoint.

Errors are split by what a caller should do: ``TransientModelError`` (connection refused, 5xx,
timeout) is worth a retry with backoff; ``ModelRequestError`` (4xx) never gets better by retrying.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import httpx

from batchinfer_dagster.settings import Settings
from batchinfer_protocol.zero_shot import (
    Prediction,
    PredictParameters,
    decode_predictions,
    encode_request,
)

# Chunks in flight at once: enough to keep the server's dynamic batcher full.
MAX_IN_FLIGHT = 4


class ModelError(RuntimeError):
    """The model server did not give predictions."""


class TransientModelError(ModelError):
    """Down, overloaded or slow: retry later."""


class ModelRequestError(ModelError):
    """The server refused the request as invalid (4xx): retrying cannot help."""


def parameters_of(settings: Settings) -> PredictParameters:
    """The request parameters the settings name (labels, multi-label, template, descriptions)."""
    return PredictParameters(
        settings.labels,
        settings.multi_label,
        settings.hypothesis_template,
        settings.label_descriptions,
    )


class ModelClient(ABC):
    """Predict many texts; the order of the answers is the order of the texts."""

    chunk_size: int = 256

    def predict(self, texts: Sequence[str], parameters: PredictParameters) -> list[Prediction]:
        """Split ``texts`` into chunks, send them concurrently, and join the answers in order."""
        chunks = [
            list(texts[i : i + self.chunk_size]) for i in range(0, len(texts), self.chunk_size)
        ]
        if len(chunks) <= 1:
            return [p for chunk in chunks for p in self.predict_chunk(chunk, parameters)]
        with ThreadPoolExecutor(max_workers=min(MAX_IN_FLIGHT, len(chunks))) as pool:
            answers = pool.map(lambda chunk: self.predict_chunk(chunk, parameters), chunks)
            return [p for answer in answers for p in answer]

    @abstractmethod
    def predict_chunk(self, texts: list[str], parameters: PredictParameters) -> list[Prediction]:
        """One request to the server."""

    def close(self) -> None:
        """Release connections."""


def parse_predictions(body: object, expected: int, source: str) -> list[Prediction]:
    """Check and convert a ``{"predictions": [...]}`` answer; a wrong shape is a server bug."""
    try:
        return decode_predictions(body, expected)
    except (ValueError, KeyError, TypeError) as error:
        raise ModelError(f"{source} {error}") from error


class HttpModelClient(ModelClient):
    """Our model server's ``POST /predict`` (locally or on Cloud Run)."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float = 120.0,
        chunk_size: int = 256,
        predict_route: str = "/predict",
        auth: httpx.Auth | None = None,
    ) -> None:
        self.url = base_url.rstrip("/") + predict_route
        self.chunk_size = chunk_size
        self.client = httpx.Client(timeout=timeout, auth=auth)

    def predict_chunk(self, texts: list[str], parameters: PredictParameters) -> list[Prediction]:
        payload = encode_request(texts, parameters)
        try:
            response = self.client.post(self.url, json=payload)
        except httpx.TimeoutException as exc:
            raise TransientModelError(f"model server {self.url} timed out: {exc!r}") from exc
        except httpx.TransportError as exc:
            raise TransientModelError(f"model server {self.url} unreachable: {exc!r}") from exc
        if response.status_code >= 500 or response.status_code == 429:
            raise TransientModelError(
                f"model server {self.url} answered {response.status_code}: {response.text[:300]}"
            )
        if response.status_code >= 400:
            raise ModelRequestError(
                f"model server {self.url} refused the request ({response.status_code}): "
                f"{response.text[:300]}"
            )
        try:
            body = response.json()
        except json.JSONDecodeError as exc:
            raise TransientModelError(f"model server {self.url} sent invalid JSON") from exc
        return parse_predictions(body, len(texts), self.url)

    def close(self) -> None:
        self.client.close()


def build_model_client(settings: Settings) -> ModelClient:
    """The client that ``BATCHINFER_MODEL_URL`` names (``vertex://…`` or ``http(s)://…``)."""
    if settings.model_url.startswith("vertex://"):
        from batchinfer_dagster.resources.vertex_model_client import VertexModelClient

        return VertexModelClient(settings)
    auth = None
    if settings.model_auth == "google-id-token":
        from batchinfer_dagster.resources.vertex_model_client import GoogleIdTokenAuth

        auth = GoogleIdTokenAuth(settings.model_url)
    return HttpModelClient(
        settings.model_url,
        timeout=settings.model_timeout_seconds,
        chunk_size=settings.model_chunk_size,
        auth=auth,
    )
