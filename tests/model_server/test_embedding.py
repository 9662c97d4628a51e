"""The embedding backend on the real packaged all-MiniLM-L6-v2."""

from __future__ import annotations

import math

import pytest

from model_server.backends.base import Instance
from model_server.backends.embedding import EmbeddingBackend

SEED_LABELS = ("mobile", "website", "billing", "account access")


def test_answers_have_the_pipeline_shape_and_sum_to_one(
    embedding_backend: EmbeddingBackend,
) -> None:
    texts = ["The app crashes on my Android phone.", "Refund my double charge, please."]
    answers = embedding_backend.predict([Instance(text, SEED_LABELS) for text in texts])
    assert [answer.sequence for answer in answers] == texts
    for answer in answers:
        assert sorted(answer.labels) == sorted(SEED_LABELS)
        assert answer.scores == sorted(answer.scores, reverse=True)
        assert math.isclose(sum(answer.scores), 1.0, abs_tol=1e-5)


@pytest.mark.parametrize(
    ("text", "label"),
    [
        ("The iPhone app crashes as soon as I open it after the update.", "mobile"),
        ("Your web page shows a 404 error in Chrome when I click checkout.", "website"),
        ("I was charged twice this month, please refund the extra payment.", "billing"),
        ("I forgot my password and the reset email never arrives.", "account access"),
    ],
)
def test_unmistakable_messages_get_their_label(
    embedding_backend: EmbeddingBackend, text: str, label: str
) -> None:
    [answer] = embedding_backend.predict([Instance(text, SEED_LABELS)])
    assert answer.labels[0] == label


def test_unknown_labels_use_a_template(embedding_backend: EmbeddingBackend) -> None:
    labels = ("shipping delay", "product quality", "billing")
    [answer] = embedding_backend.predict(
        [Instance("My parcel is two weeks late and tracking has not moved.", labels)]
    )
    assert answer.labels[0] == "shipping delay"
    assert math.isclose(sum(answer.scores), 1.0, abs_tol=1e-5)


def test_multi_label_scores_are_independent(embedding_backend: EmbeddingBackend) -> None:
    text = "The app crashed while paying and now I was charged twice."
    [answer] = embedding_backend.predict([Instance(text, SEED_LABELS, multi_label=True)])
    assert all(0.0 <= score <= 1.0 for score in answer.scores)
    assert set(answer.labels[:2]) == {"mobile", "billing"}


def test_batched_answers_equal_one_by_one(embedding_backend: EmbeddingBackend) -> None:
    texts = ["short", "a much longer message about my invoice and the refund " * 5, "2FA code?"]
    together = embedding_backend.predict([Instance(text, SEED_LABELS) for text in texts])
    alone = [embedding_backend.predict([Instance(text, SEED_LABELS)])[0] for text in texts]
    for batched, single in zip(together, alone, strict=True):
        assert batched.labels == single.labels
        assert max(abs(a - b) for a, b in zip(batched.scores, single.scores)) < 1e-4
