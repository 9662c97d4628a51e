"""Clients of the model server: our HTTP server (locally or on Cloud Run), or a Vertex endpoint.

A client splits a ledger batch into *client chunks* (``chunk_size`` texts per request, a few in
flight at once); the server merges chunks of all clients into its own dynamic batches (see
docs/architecture.md, "Glossary"). Every answer names the model that made it: that id is the
lineage key of the stored predictions, so a changed model never overwrites another's rows.

Errors are split by what a caller should do: ``TransientModelError`` (connection refused, 5xx,
timeout) is worth a retry with backoff; ``ModelRequestError`` (4xx) never gets better by retrying.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx

from batchinfer_dagster.chunks import chunk_list
from batchinfer_protocol.zero_shot import (
    Prediction,
    PredictParameters,
    decode_model,
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


@dataclass(frozen=True)
class ModelAnswer:
    """Predictions in the order of the texts, and the id of the model that made them."""

    model: str
    predictions: list[Prediction]


def joined(answers: Sequence[ModelAnswer], source: str) -> ModelAnswer:
    """The answers of consecutive chunks as one; they must come from one model.

    Two models in one batch happen only while the server rolls out a new model: the batch is
    retried (``TransientModelError``) rather than stored under two lineage keys.
    """
    models = sorted({answer.model for answer in answers})
    if len(models) > 1:
        raise TransientModelError(
            f"{source} answered one batch with {len(models)} models {models}: a new model is "
            "rolling out; the batch is predicted again once one model serves"
        )
    return ModelAnswer(
        model=models[0] if models else "",
        predictions=[p for answer in answers for p in answer.predictions],
    )


class ModelClient(ABC):
    """Predict many texts; the order of the answers is the order of the texts."""

    chunk_size: int = 256

    def predict(self, texts: Sequence[str], parameters: PredictParameters) -> ModelAnswer:
        """Split ``texts`` into client chunks, send them concurrently, join the answers in order."""
        chunks = chunk_list(texts, self.chunk_size)
        if len(chunks) <= 1:
            answers = [self.predict_chunk(chunk, parameters) for chunk in chunks]
        else:
            with ThreadPoolExecutor(max_workers=min(MAX_IN_FLIGHT, len(chunks))) as pool:
                answers = list(
                    pool.map(lambda chunk: self.predict_chunk(chunk, parameters), chunks)
                )
        return joined(answers, self.source)

    @property
    def source(self) -> str:
        """The server, as error messages name it."""
        return type(self).__name__

    @abstractmethod
    def predict_chunk(self, texts: list[str], parameters: PredictParameters) -> ModelAnswer:
        """One request to the server."""

    def close(self) -> None:
        """Release connections."""


def parse_predictions(body: object, expected: int, source: str) -> list[Prediction]:
    """Check and convert a ``{"predictions": [...]}`` answer; a wrong shape is a server bug."""
    try:
        return decode_predictions(body, expected)
    except (ValueError, KeyError, TypeError) as error:
        raise ModelError(f"{source} {error}") from error


def parse_answer(body: object, expected: int, source: str) -> ModelAnswer:
    """A 200 answer of our model server: its predictions and the model id it reports."""
    try:
        model = decode_model(body)
    except ValueError as error:
        raise ModelError(f"{source} {error}; is it our model server?") from error
    return ModelAnswer(model=model, predictions=parse_predictions(body, expected, source))


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

    @property
    def source(self) -> str:
        return f"model server {self.url}"

    def predict_chunk(self, texts: list[str], parameters: PredictParameters) -> ModelAnswer:
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
        return parse_answer(body, len(texts), self.url)

    def close(self) -> None:
        self.client.close()
