"""Fault 7: the model server under abuse from concurrent clients, bad and good requests mixed.

Every bad request gets its 4xx, every good one the same answer as when sent alone, the server
stays up and its memory stays bounded.
"""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor

import httpx

from batchinfer_testing.deployment import TEXTS
from batchinfer_testing.model_server import ModelServer, rss_kib

LABELS = ["mobile", "website", "billing", "account access"]
# Generous: the embedding server idles near 700 MiB; abuse must not grow it by a GiB.
RSS_GROWTH_BOUND_KIB = 1024 * 1024


def _body(instances: object, **parameters: object) -> dict[str, object]:
    return {"instances": instances, "parameters": {"candidate_labels": LABELS, **parameters}}


BAD: list[tuple[str, object, int]] = [
    ("10,000 instances", _body(["hello"] * 10_000), 413),
    ("an 11 MB body", _body(["a" * 11_000_000]), 413),
    (
        "200 labels",
        {"instances": ["hi"], "parameters": {"candidate_labels": [f"l{i}" for i in range(200)]}},
        422,
    ),
    ("template without {}", _body(["hi"], hypothesis_template="This is it."), 422),
    ("empty text", _body(["   "]), 422),
    ("no instances", _body([]), 422),
    ("not JSON", "{not json", 400),
    ("instance of the wrong type", _body([{"txt": 1}]), 422),
]
# A 1 MB text is a legal request: predicted on its truncated tokens, its sequence whole.
GOOD = [_body(TEXTS[i * 7 : i * 7 + 1 + i % 5]) for i in range(12)] + [
    _body(["please refund my order " * 45_000])
]


def _post(url: str, body: object) -> httpx.Response:
    if isinstance(body, str):
        return httpx.post(f"{url}/predict", content=body, timeout=120)
    return httpx.post(f"{url}/predict", json=body, timeout=120)


def test_model_server_under_abuse(model_server: ModelServer) -> None:
    url = model_server.url
    baseline = [_post(url, body).json()["predictions"] for body in GOOD]
    rss_before = rss_kib(model_server.pid)
    work = [("good", i) for i in range(len(GOOD))] * 3 + [("bad", i) for i in range(len(BAD))] * 2
    random.Random(7).shuffle(work)

    def send(item: tuple[str, int]) -> tuple[str, int, httpx.Response]:
        kind, index = item
        body = GOOD[index] if kind == "good" else BAD[index][1]
        return kind, index, _post(url, body)

    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(send, work))
    rss_after = rss_kib(model_server.pid)

    for kind, index, response in answers:
        if kind == "bad":
            name, _, status = BAD[index]
            assert response.status_code == status, (
                f"{name}: {response.status_code} {response.text[:200]}"
            )
            assert response.json().get("error") or response.json().get("detail"), name
            continue
        assert response.status_code == 200, response.text[:300]
        for got, want in zip(response.json()["predictions"], baseline[index], strict=True):
            assert got["sequence"] == want["sequence"]
            assert got["labels"] == want["labels"]
            assert (
                max(abs(a - b) for a, b in zip(got["scores"], want["scores"], strict=True)) < 1e-4
            )
    assert model_server.process is not None
    assert model_server.process.poll() is None
    assert httpx.get(f"{url}/health", timeout=5).status_code == 200
    growth = rss_after - rss_before
    print(f"model server RSS: {rss_before // 1024} MiB before, {rss_after // 1024} MiB after")
    assert growth < RSS_GROWTH_BOUND_KIB, f"RSS grew by {growth // 1024} MiB under abuse"
