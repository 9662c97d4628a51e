"""The HTTP model client: answers in order, the model id as lineage key, errors by what to do.

The server side is a handler speaking the wire format of ``POST /predict`` (protocol), so each
answer shape the client must handle can be produced exactly; the real server is exercised by
the Dagster and reliability tests.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx
import pytest

from batchinfer_dagster.clients.model_client import (
    HttpModelClient,
    ModelError,
    ModelRequestError,
    TransientModelError,
)
from batchinfer_dagster.settings import Settings
from batchinfer_protocol.zero_shot import PredictParameters
from batchinfer_testing.deployment import model_client_of

PARAMETERS = PredictParameters(("a", "b"))
Answer = Callable[[list[str], int], httpx.Response]


def client_answering(answer: Answer, chunk_size: int = 2) -> HttpModelClient:
    calls = iter(range(1000))

    def handler(request: httpx.Request) -> httpx.Response:
        return answer(json.loads(request.content)["instances"], next(calls))

    client = model_client_of(Settings(), url="http://model.test", chunk_size=chunk_size)
    client.client = httpx.Client(transport=httpx.MockTransport(handler))
    return client


def predictions(texts: list[str], model: str | None) -> httpx.Response:
    body: dict[str, object] = {
        "predictions": [{"sequence": t, "labels": ["a", "b"], "scores": [0.7, 0.3]} for t in texts]
    }
    if model is not None:
        body["model"] = model
    return httpx.Response(200, json=body)


def test_chunks_are_joined_in_order_with_the_reported_model() -> None:
    client = client_answering(lambda texts, _: predictions(texts, "org/model-v2"))
    texts = [f"t{i}" for i in range(5)]  # chunks of 2, 2, 1

    answer = client.predict(texts, PARAMETERS)

    assert answer.model == "org/model-v2"
    assert [p.sequence for p in answer.predictions] == texts


def test_an_answer_without_a_model_id_is_refused() -> None:
    client = client_answering(lambda texts, _: predictions(texts, None))
    with pytest.raises(ModelError, match=r"without a model id"):
        client.predict(["t"], PARAMETERS)


def test_two_models_in_one_batch_is_transient() -> None:
    """A rollout between two chunks: retried, never stored under two lineage keys."""
    client = client_answering(lambda texts, call: predictions(texts, f"model-{min(call, 1)}"))
    with pytest.raises(TransientModelError, match=r"2 models \['model-0', 'model-1'\]"):
        client.predict(["t1", "t2", "t3"], PARAMETERS)


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (500, TransientModelError),
        (429, TransientModelError),
        (408, TransientModelError),
        (413, ModelRequestError),
        (422, ModelRequestError),
    ],
)
def test_status_codes_say_whether_to_retry(status: int, error: type[ModelError]) -> None:
    client = client_answering(lambda texts, _: httpx.Response(status, json={"error": "no"}))
    with pytest.raises(error, match=str(status)):
        client.predict(["t"], PARAMETERS)
