"""The work of one request is bounded: labels are cut before any template is formatted with them.

A label is cut to MODEL_MAX_LABEL_CHARS characters (40 here) for the model; the answer keeps it
whole. Pinned at the limit and one past it, on the parser, the NLI hypotheses and the real
embedding model.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from batchinfer_protocol.predict_request import RequestError, decode_request
from batchinfer_protocol.zero_shot import MAX_DESCRIPTION_CHARS
from model_server.app import create_app
from model_server.backends.base import Instance
from model_server.backends.embedding import EmbeddingBackend
from model_server.backends.label_descriptions import (
    MAX_PHRASES_PER_LABEL,
    PHRASE_TEMPLATE,
    description_phrases,
)
from model_server.backends.nli import label_hypotheses
from model_server.instances import instances_of
from model_server.settings import ServerSettings

SETTINGS = ServerSettings(model_max_label_chars=40, model_max_batch_size=4)
AT_LIMIT = "billing question about an invoice chargeX"[:40]


def parsed(labels: list[str], **parameters: object) -> Instance:
    body = {"instances": ["x"], "parameters": {"candidate_labels": labels, **parameters}}
    request = decode_request(json.dumps(body).encode(), SETTINGS.request_limits)
    [instance] = instances_of(request, SETTINGS.model_max_label_chars)
    return instance


def test_a_label_at_the_limit_is_read_whole() -> None:
    assert len(AT_LIMIT) == 40
    instance = parsed([AT_LIMIT, "mobile"])
    assert instance.label_texts == ()
    assert [instance.label_text(i) for i in range(2)] == [AT_LIMIT, "mobile"]


def test_a_label_one_past_the_limit_is_cut_and_the_others_kept() -> None:
    instance = parsed([AT_LIMIT + "Y", "mobile"])
    assert instance.labels == (AT_LIMIT + "Y", "mobile")
    assert instance.label_texts == (AT_LIMIT, "mobile")


def test_nli_formats_its_templates_with_the_cut_label() -> None:
    long_label = "refund " * 20_000  # 140 KB
    instance = parsed([long_label, "mobile"], hypothesis_template="It is about {}.")
    hypotheses = label_hypotheses(instance, "This example is {}.")
    assert hypotheses == [(f"It is about {long_label[:40]}.",), ("It is about mobile.",)]


@pytest.mark.parametrize(("length", "status"), [(MAX_DESCRIPTION_CHARS, 200), (1001, 422)])
def test_a_template_is_bounded_like_a_description(
    client: TestClient, length: int, status: int
) -> None:
    template = "It is about {}." + "x" * (length - 15)
    assert len(template) == length
    body = {"instances": ["my card"], "parameters": {"hypothesis_template": template}}
    response = client.post("/predict", json=body)
    assert response.status_code == status, response.text
    if status == 422:
        assert "1001 characters; the limit is 1000" in response.json()["error"]


def test_a_template_over_the_limit_is_refused_before_parsing_it() -> None:
    with pytest.raises(RequestError, match="hypothesis_template"):
        parsed(["a", "b"], hypothesis_template="{}" + "{{}}" * 5000)


@pytest.fixture
def client(embedding_backend: EmbeddingBackend) -> Iterator[TestClient]:
    app = create_app(SETTINGS, backend=embedding_backend, load_on_startup=False)
    with TestClient(app) as test_client:
        yield test_client


def scores_by_label(client: TestClient, labels: list[str]) -> dict[str, float]:
    body = {"instances": ["You charged my card twice."], "parameters": {"candidate_labels": labels}}
    response = client.post("/predict", json=body)
    assert response.status_code == 200, response.text
    [prediction] = response.json()["predictions"]
    return dict(zip(prediction["labels"], prediction["scores"], strict=True))


def test_labels_that_differ_at_the_limit_score_apart(client: TestClient) -> None:
    first, second = AT_LIMIT[:-1] + "a", AT_LIMIT[:-1] + "b"
    scores = scores_by_label(client, [first, second])
    assert set(scores) == {first, second}
    assert scores[first] != scores[second]


def test_labels_that_differ_past_the_limit_read_the_same_and_are_answered_whole(
    client: TestClient, embedding_backend: EmbeddingBackend
) -> None:
    first, second = AT_LIMIT + " refund" * 20_000, AT_LIMIT + " delivery" * 20_000
    scores = scores_by_label(client, [first, second])
    assert set(scores) == {first, second}
    assert scores[first] == scores[second]
    # What the model read, and the cache keeps, is the cut label, never the 140 KB one.
    read = {label for label, _, _ in embedding_backend.label_cache if label.startswith(AT_LIMIT)}
    assert read == {AT_LIMIT}


@pytest.mark.parametrize("count", [MAX_PHRASES_PER_LABEL, MAX_PHRASES_PER_LABEL + 1])
def test_a_label_is_embedded_with_at_most_its_first_64_phrases(count: int) -> None:
    """16 descriptions of 1,000 characters of comma-separated words were 2,400 phrases."""
    words = [f"word{index}" for index in range(count)]
    descriptions = (", ".join(words[:40]), ", ".join(words[40:]))
    phrases = description_phrases(descriptions)
    kept = [PHRASE_TEMPLATE.format(word) for word in words[:MAX_PHRASES_PER_LABEL]]
    assert list(phrases) == kept
