"""How backends read labels: descriptions, bare-label templates, one-label fit scores."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import pipeline

from batchinfer_protocol.zero_shot import DEFAULT_LABELS
from batchinfer_testing.backends import DEFAULT_TEMPLATE, forward_options
from model_server.backends.base import Instance
from model_server.backends.embedding import EmbeddingBackend
from model_server.backends.label_descriptions import (
    BARE_LABEL_TEMPLATES,
    PHRASE_TEMPLATE,
    LabelPrototypes,
    description_phrases,
    label_prototypes,
    packaged_label_descriptions,
    read_label_descriptions_file,
)
from model_server.backends.label_fit import LabelVector, exclusive_scores, unit
from model_server.backends.nli import NliBackend

BILLING_TEXTS = [
    "I was charged twice this month, please refund the extra payment.",
    "Why is my invoice higher than the price on your plans page?",
]
UNRELATED_TEXTS = ["the weather is sunny today", "My grandmother bakes bread on Sundays."]


def test_the_shipped_descriptions_cover_the_default_labels_in_the_request_form() -> None:
    shipped = packaged_label_descriptions()
    assert sorted(shipped) == sorted(DEFAULT_LABELS)
    assert all(len(texts) >= 3 for texts in shipped.values())


def test_a_descriptions_file_is_read_in_the_request_form(tmp_path: Path) -> None:
    path = tmp_path / "labels.json"
    path.write_text(json.dumps({"refund": ["Money back for an order."], "tax": "VAT questions"}))
    assert read_label_descriptions_file(path) == {
        "refund": ("Money back for an order.",),
        "tax": ("VAT questions",),
    }
    path.write_text(json.dumps({"refund": []}))
    with pytest.raises(ValueError, match=f"{path}: the descriptions of 'refund' contain an empty"):
        read_label_descriptions_file(path)


def test_prototypes_are_the_name_in_templates_the_descriptions_and_their_phrases() -> None:
    shipped = packaged_label_descriptions()["billing"]
    bare_names = tuple(template.format("refund") for template in BARE_LABEL_TEMPLATES)
    own = label_prototypes("Billing ", ("Own words, and more.",), None)
    assert own.descriptions == ("Own words, and more.",)
    assert own.phrases == (PHRASE_TEMPLATE.format("Own words"), PHRASE_TEMPLATE.format("more"))
    assert label_prototypes("Billing ", (), "About {}.") == LabelPrototypes(
        names=("About Billing .",), descriptions=shipped, phrases=description_phrases(shipped)
    )
    assert label_prototypes("refund", (), None) == LabelPrototypes(bare_names, (), ())


def test_a_description_is_cut_into_its_phrases_at_list_boundaries() -> None:
    def cut(*descriptions: str) -> list[str]:
        return [
            phrase.removeprefix("This message is about ").removesuffix(".")
            for phrase in description_phrases(descriptions)
        ]

    assert cut("Renting a car: pickup, return, the vehicle, drivers and rental charges.") == [
        "Renting a car",
        "pickup",
        "return",
        "the vehicle",
        "drivers",
        "rental charges",
    ]
    assert cut("Refund or exchange; store credit") == ["Refund", "exchange", "store credit"]
    # Words that merely contain "and"/"or" are not boundaries; repeats and empty pieces go.
    assert cut("Brand stores", "Brand stores, , .") == ["Brand stores"]
    assert cut("..., ;") == []


def test_a_label_vector_weighs_its_parts_equally_and_skips_empty_ones() -> None:
    east, north = np.eye(2, dtype=np.float32)
    reference = unit(np.array([[1.0, 1.0], [1.0, -1.0], [0.0, 1.0]], dtype=np.float32))
    label = LabelVector.of(
        [np.stack([east, east, east]), np.empty((0, 2), np.float32), north[None]], reference
    )
    assert label.vector == pytest.approx(unit(east + north))
    similarities = reference @ label.vector
    assert label.prior == pytest.approx(float(similarities.mean()))
    assert label.none_threshold == pytest.approx(
        float(similarities.mean() + 3 * similarities.std())
    )
    with pytest.raises(ValueError, match="at least one embedded name"):
        LabelVector.of([np.empty((0, 2), np.float32), north[None]], reference)


def test_competing_labels_are_compared_after_their_priors() -> None:
    """Equal similarities: the label that every everyday text is close to loses."""
    scores = exclusive_scores(np.array([0.5, 0.5]), np.array([0.3, 0.1]), temperature=0.05)
    assert scores.sum() == pytest.approx(1.0)
    assert scores[1] > 0.95
    # A prior shifts the label's similarity, nothing else: equal priors are a plain softmax.
    assert exclusive_scores(np.array([0.5, 0.4]), np.array([0.2, 0.2]), 0.05) == pytest.approx(
        exclusive_scores(np.array([0.3, 0.2]), np.zeros(2), 0.05)
    )


def test_the_backend_scores_competing_labels_by_similarity_less_prior(
    embedding_backend: EmbeddingBackend,
) -> None:
    text = "My suitcase never arrived in Lisbon."
    labels = ("flight", "baggage", "hotel")
    [answer] = embedding_backend.predict([Instance(text, labels)])
    vector = embedding_backend.encode([text])[0]
    built = [embedding_backend.label_vector(label, (), None) for label in labels]
    assert len({round(label.prior, 6) for label in built}) == len(labels)
    expected = exclusive_scores(
        np.array([float(label.vector @ vector) for label in built]),
        np.array([label.prior for label in built]),
        embedding_backend.temperature,
    )
    got = dict(zip(answer.labels, answer.scores, strict=True))
    assert [got[label] for label in labels] == pytest.approx(expected.tolist(), abs=1e-5)


def test_a_texts_answer_never_depends_on_the_rest_of_its_request(
    embedding_backend: EmbeddingBackend,
) -> None:
    """Calibration is the label's own: the same text and labels answer the same alone, among
    other texts, and among instances with other labels and descriptions."""
    labels = ("flight", "baggage", "hotel")
    mine = Instance("Our bags were left behind in Frankfurt.", labels)
    others = [
        Instance("Cancel my room for Friday.", labels),
        Instance(
            "Cancel my room for Friday.", ("printer", "email"), label_descriptions=(("Toner.",), ())
        ),
        Instance("The weather is sunny today.", ("baggage",)),
        Instance("Lost luggage.", labels, multi_label=True),
    ]
    [alone] = embedding_backend.predict([mine])
    crowded = embedding_backend.predict([*others[:2], mine, *others[2:]])[2]
    reordered = embedding_backend.predict([Instance(mine.text, tuple(reversed(labels)))])[0]
    for answer in (crowded, reordered):
        assert answer.labels == alone.labels
        assert answer.scores == pytest.approx(alone.scores, abs=1e-5)


@pytest.mark.parametrize("text", BILLING_TEXTS)
def test_one_label_scores_high_for_a_text_that_fits_it(
    embedding_backend: EmbeddingBackend, text: str
) -> None:
    [answer] = embedding_backend.predict([Instance(text, ("billing",))])
    assert answer.labels == ["billing"]
    assert answer.scores[0] > 0.9


@pytest.mark.parametrize("text", UNRELATED_TEXTS)
def test_one_label_scores_low_for_a_text_that_does_not_fit(
    embedding_backend: EmbeddingBackend, text: str
) -> None:
    [answer] = embedding_backend.predict([Instance(text, ("billing",))])
    assert answer.scores[0] < 0.1


def test_one_bare_label_scores_fit_too(embedding_backend: EmbeddingBackend) -> None:
    fits, unrelated = embedding_backend.predict(
        [
            Instance("Our flight to Lisbon was cancelled and nobody rebooked us.", ("flight",)),
            Instance("the weather is sunny today", ("flight",)),
        ]
    )
    assert fits.scores[0] > 0.5
    assert unrelated.scores[0] < 0.1


def test_multi_label_gives_each_label_its_fit(embedding_backend: EmbeddingBackend) -> None:
    text = "The app crashed while paying and now I was charged twice."
    [answer] = embedding_backend.predict([Instance(text, DEFAULT_LABELS, multi_label=True)])
    assert set(answer.labels[:2]) == {"mobile", "billing"}
    assert answer.scores[1] > 0.5
    scores = dict(zip(answer.labels, answer.scores, strict=True))
    [alone] = embedding_backend.predict([Instance(text, ("billing",))])
    assert alone.scores[0] == pytest.approx(scores["billing"], abs=1e-6)


def test_nli_descriptions_are_hypotheses_as_the_pipeline_reads_them(bert_nli_dir: Path) -> None:
    """One description per label: the answer is the pipeline's with the descriptions as labels."""
    texts = ["The app crashes on my phone.", "I was charged twice, refund me. " * 3]
    descriptions = {"mobile": "A phone app problem.", "billing": "A payment is wrong."}
    classifier = pipeline("zero-shot-classification", model=str(bert_nli_dir), device="cpu")
    backend = NliBackend(
        str(bert_nli_dir),
        torch.device("cpu"),
        max_batch_size=3,
        forward=forward_options(),
        default_template=DEFAULT_TEMPLATE,
    )
    backend.load()
    for multi_label in (False, True):
        expected = classifier(
            texts,
            candidate_labels=list(descriptions.values()),
            hypothesis_template="{}",
            multi_label=multi_label,
        )
        instances = [
            Instance(
                text,
                tuple(descriptions),
                multi_label,
                label_descriptions=tuple((d,) for d in descriptions.values()),
            )
            for text in texts
        ]
        by_description = {d: label for label, d in descriptions.items()}
        for want, got in zip(expected, backend.predict(instances), strict=True):
            assert got.labels == [by_description[d] for d in want["labels"]]
            assert got.scores == pytest.approx(want["scores"], abs=1e-5)


def test_nli_label_with_several_descriptions_takes_its_most_entailed(bert_nli_dir: Path) -> None:
    backend = NliBackend(
        str(bert_nli_dir),
        torch.device("cpu"),
        max_batch_size=4,
        forward=forward_options(),
        default_template=DEFAULT_TEMPLATE,
    )
    backend.load()
    text = "The app crashes on my phone."
    candidates = ("A phone app problem.", "Software crashes.", "Something about weather.")
    other = ("A payment is wrong.",)

    def answer(descriptions: tuple[str, ...]) -> dict[str, float]:
        instance = Instance(text, ("a", "b"), label_descriptions=(descriptions, other))
        assert backend.rows(instance) == len(descriptions) + 1
        [prediction] = backend.predict([instance])
        return dict(zip(prediction.labels, prediction.scores, strict=True))

    alone = [answer((description,)) for description in candidates]
    together = answer(candidates)
    best = max(alone, key=lambda scores: scores["a"])
    assert together == pytest.approx(best, abs=1e-6)
    assert len({round(scores["a"], 6) for scores in alone}) == len(candidates)
