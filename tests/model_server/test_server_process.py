"""The real `python -m model_server` process, with concurrent clients."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx

SEED_LABELS = ["mobile", "website", "billing", "account access"]
CLEAR_TEXTS = {
    "mobile": "The Android app crashes whenever I open it on my phone.",
    "website": "Your website shows a 404 error page in my browser.",
    "billing": "You charged my credit card twice, I want a refund.",
    "account access": "I am locked out of my account and the password reset fails.",
}


def post(url: str, body: object) -> httpx.Response:
    return httpx.post(f"{url}/predict", json=body, timeout=60)


def test_process_is_healthy_and_answers(server_url: str) -> None:
    health = httpx.get(f"{server_url}/health", timeout=10)
    assert health.status_code == 200
    assert health.json()["backend"] == "embedding"
    response = post(server_url, {"instances": [CLEAR_TEXTS["billing"]]})
    assert response.status_code == 200
    assert response.json()["predictions"][0]["labels"][0] == "billing"


def client_request(index: int) -> tuple[list[str], list[str]]:
    """Request `index`: a rotation of the clear texts, numbered so every answer is unique."""
    labels = [SEED_LABELS[(index + k) % 4] for k in range(1 + index % 7)]
    texts = [f"{CLEAR_TEXTS[label]} (ticket {index}-{k})" for k, label in enumerate(labels)]
    return texts, labels


def test_concurrent_clients_get_their_own_answers_in_order(server_url: str) -> None:
    requests = [client_request(index) for index in range(24)]
    with ThreadPoolExecutor(max_workers=12) as pool:
        responses = list(
            pool.map(lambda request: post(server_url, {"instances": request[0]}), requests)
        )
    for (texts, labels), response in zip(requests, responses, strict=True):
        assert response.status_code == 200, response.text
        predictions = response.json()["predictions"]
        assert [answer["sequence"] for answer in predictions] == texts
        assert [answer["labels"][0] for answer in predictions] == labels


def test_bad_requests_do_not_break_concurrent_good_ones(server_url: str) -> None:
    bodies: list[object] = []
    for index in range(20):
        texts, _ = client_request(index)
        bodies.append({"instances": texts})
        bodies.append({"instances": [*texts, ""]})
        bodies.append({"instances": texts, "parameters": {"candidate_labels": ["a", "a"]}})
    with ThreadPoolExecutor(max_workers=12) as pool:
        responses = list(pool.map(lambda body: post(server_url, body), bodies))
    for index in range(20):
        good, empty_text, duplicate_labels = responses[3 * index : 3 * index + 3]
        texts, labels = client_request(index)
        assert good.status_code == 200, good.text
        assert [answer["labels"][0] for answer in good.json()["predictions"]] == labels
        assert empty_text.status_code == 422
        assert duplicate_labels.status_code == 422
    assert httpx.get(f"{server_url}/health", timeout=10).status_code == 200


def test_answers_under_load_equal_answers_alone(server_url: str) -> None:
    texts, _ = client_request(6)
    alone = post(server_url, {"instances": texts}).json()["predictions"]
    with ThreadPoolExecutor(max_workers=8) as pool:
        together = list(pool.map(lambda _: post(server_url, {"instances": texts}), range(8)))
    for response in together:
        for single, batched in zip(alone, response.json()["predictions"], strict=True):
            assert batched["labels"] == single["labels"]
            assert max(abs(a - b) for a, b in zip(batched["scores"], single["scores"])) < 1e-4


def test_metrics_are_prometheus_text(server_url: str) -> None:
    response = httpx.get(f"{server_url}/metrics", timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert "# TYPE model_server_batch_rows histogram" in response.text
