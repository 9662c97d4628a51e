"""The client reads the weights digest defensively: from answers and /health, absent → None;
two digests under one model id in one batch are a rollout, retried like two models."""

from __future__ import annotations

import json

import httpx
import pytest

from batchinfer_dagster.clients.model_client import (
    HttpModelClient,
    HttpModelClientConfig,
    ServedModel,
    TransientModelError,
)
from batchinfer_protocol.zero_shot import DEFAULT_MAX_REQUEST_BYTES, PredictParameters

PARAMETERS = PredictParameters(("a", "b"))
DIGEST = "sha256:" + "ab" * 32


def client_with(handler: httpx.MockTransport) -> HttpModelClient:
    config = HttpModelClientConfig(
        url="http://model.test",
        timeout_seconds=120,
        chunk_size=2,
        max_request_bytes=DEFAULT_MAX_REQUEST_BYTES,
    )
    client = HttpModelClient(config)
    client.client = httpx.Client(transport=handler)
    return client


def answering(digests: list[str | None]) -> httpx.MockTransport:
    calls = iter(digests)

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/health":
            digest = digests[0]
            body = {
                "status": "ready",
                "model": "org/m",
                **({"model_digest": digest} if digest else {}),
            }
            return httpx.Response(200, json=body)
        texts = json.loads(request.content)["instances"]
        body = {
            "predictions": [
                {"sequence": t, "labels": ["a", "b"], "scores": [0.7, 0.3]} for t in texts
            ],
            "model": "org/m",
        }
        digest = next(calls)
        if digest is not None:
            body["model_digest"] = digest
        return httpx.Response(200, json=body)

    return httpx.MockTransport(handler)


def test_the_digest_of_answers_and_health_is_read_and_absent_is_none() -> None:
    client = client_with(answering([DIGEST, DIGEST]))
    assert client.predict(["t1", "t2", "t3"], PARAMETERS).model_digest == DIGEST
    assert client.served_model() == ServedModel("org/m", DIGEST)
    old = client_with(answering([None]))
    assert old.predict(["t1"], PARAMETERS).model_digest is None
    assert old.served_model() == ServedModel("org/m", None)


def test_two_digests_in_one_batch_are_retried() -> None:
    client = client_with(answering([DIGEST, "sha256:" + "cd" * 32]))
    with pytest.raises(TransientModelError, match="2 models"):
        client.predict(["t1", "t2", "t3"], PARAMETERS)


def test_a_server_that_is_down_or_not_ready_serves_no_known_model() -> None:
    def unready(request: httpx.Request) -> httpx.Response:
        return httpx.Response(503, json={"status": "loading", "model": "org/m"})

    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    assert client_with(httpx.MockTransport(unready)).served_model() is None
    assert client_with(httpx.MockTransport(down)).served_model() is None
