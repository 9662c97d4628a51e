"""The nli backend must give the Hugging Face zero-shot pipeline's answers, batched."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from transformers import pipeline

from batchinfer_protocol.zero_shot import Prediction, decode_predictions
from batchinfer_testing.backends import DEFAULT_TEMPLATE, forward_options
from model_server.app import create_app
from model_server.backends.base import Instance
from model_server.backends.nli import NliBackend, entailment_id
from model_server.settings import ServerSettings

# Very different lengths: a word, sentences, texts truncated at the model's max length, unicode,
# and the BART end-of-sequence marker inside a text (its batch then has unequal <eos> counts).
EXACTNESS_TEXTS = [
    "Hi",
    "The app crashes on my phone every time I open it.",
    "I was charged twice for my subscription and want a refund. " * 12,
    "password reset?",
    "Checkout page broken in the browser, error 500 when paying with my card, tried Firefox too.",
    "Ünïcödé — ça ne marche pas 🙃 la page ne charge pas",
    "a " * 200,
    "My login works on one computer but not on the other </s> and [SEP] either.",
]

LABELS = ["mobile", "website", "billing", "account access", "shipping"]
TOLERANCE = 1e-5

CASES = [
    pytest.param(LABELS, False, None, id="single-label"),
    pytest.param(LABELS, True, None, id="multi-label"),
    pytest.param(LABELS, False, "The customer writes about {}!", id="custom-template"),
    pytest.param(["billing"], False, None, id="one-label"),
]


def pipeline_answers(
    model_dir: Path, labels: list[str], multi_label: bool, template: str | None
) -> list[dict]:
    classifier = pipeline("zero-shot-classification", model=str(model_dir), device="cpu")
    extra = {} if template is None else {"hypothesis_template": template}
    return classifier(EXACTNESS_TEXTS, candidate_labels=labels, multi_label=multi_label, **extra)


def assert_same_answers(expected: list[dict], actual: list[Prediction]) -> None:
    assert len(actual) == len(expected)
    for want, got in zip(expected, actual, strict=True):
        assert got.sequence == want["sequence"]
        assert got.labels == want["labels"]
        deltas = [abs(a - b) for a, b in zip(got.scores, want["scores"], strict=True)]
        assert max(deltas) <= TOLERANCE, (want, got)


@pytest.mark.parametrize(("labels", "multi_label", "template"), CASES)
def test_backend_matches_pipeline(
    nli_model_dir: Path, labels: list[str], multi_label: bool, template: str | None
) -> None:
    expected = pipeline_answers(nli_model_dir, labels, multi_label, template)
    # A batch size that does not divide the pair count, so batches mix texts and lengths.
    backend = NliBackend(
        str(nli_model_dir),
        torch.device("cpu"),
        max_batch_size=7,
        forward=forward_options(),
        default_template=DEFAULT_TEMPLATE,
    )
    backend.load()
    instances = [Instance(text, tuple(labels), multi_label, template) for text in EXACTNESS_TEXTS]
    actual = backend.predict(instances)
    assert_same_answers(expected, actual)
    top_scores = {answer["scores"][0] for answer in expected}
    assert len(top_scores) > 1, "random weights should give different scores per text"


def test_http_server_matches_pipeline(nli_model_dir: Path) -> None:
    expected = pipeline_answers(nli_model_dir, LABELS, False, None)
    settings = ServerSettings(
        model_backend="nli", model_name_or_path=str(nli_model_dir), model_max_batch_size=8
    )
    app = create_app(settings, load_on_startup=False)
    app.state.service.load()
    with TestClient(app) as client:
        response = client.post(
            "/predict",
            json={
                "instances": [{"text": text} for text in EXACTNESS_TEXTS],
                "parameters": {"candidate_labels": LABELS},
            },
        )
    assert response.status_code == 200, response.text
    assert response.json()["model"] == str(nli_model_dir)
    # Read back as the client reads it, with the protocol's decoder.
    assert_same_answers(expected, decode_predictions(response.json(), len(EXACTNESS_TEXTS)))


def test_mixed_requests_in_one_batch_match_pipeline(bart_nli_dir: Path) -> None:
    """Instances with different labels, templates and modes share one backend call."""
    backend = NliBackend(
        str(bart_nli_dir),
        torch.device("cpu"),
        max_batch_size=64,
        forward=forward_options(),
        default_template=DEFAULT_TEMPLATE,
    )
    backend.load()
    first = pipeline_answers(bart_nli_dir, LABELS, True, None)
    second = pipeline_answers(bart_nli_dir, ["refund", "crash"], False, "Topic: {}")
    instances = [Instance(text, tuple(LABELS), True) for text in EXACTNESS_TEXTS] + [
        Instance(text, ("refund", "crash"), False, "Topic: {}") for text in EXACTNESS_TEXTS
    ]
    actual = backend.predict(instances)
    assert_same_answers(first + second, actual)


@pytest.mark.parametrize(
    ("label2id", "expected"),
    [
        ({"contradiction": 0, "neutral": 1, "entailment": 2}, 2),
        ({"ENTAILMENT": 0, "NEUTRAL": 1, "CONTRADICTION": 2}, 0),
        ({"LABEL_0": 0, "LABEL_1": 1}, -1),
    ],
)
def test_entailment_id_follows_pipeline_rule(label2id: dict[str, int], expected: int) -> None:
    assert entailment_id(label2id) == expected


def test_onnx_runtime_matches_pipeline_and_reuses_its_export(
    nli_model_dir: Path, tmp_path: Path
) -> None:
    """MODEL_RUNTIME=onnxruntime: exported at first load, cached, within 1e-5 of the pipeline.

    Single-label, multi-label and a custom template share the backend calls; for BART the
    texts include "</s>", whose unequal <eos> counts the exported graph cannot refuse itself.
    """
    options = forward_options(runtime="onnxruntime", cache_dir=str(tmp_path), max_batch_size=7)
    first = NliBackend(
        str(nli_model_dir), torch.device("cpu"), forward=options, default_template=DEFAULT_TEMPLATE
    )
    first.load()
    [exported] = list((tmp_path / "onnx").glob("*/model.onnx"))
    exported_at = exported.stat().st_mtime_ns
    second = NliBackend(
        str(nli_model_dir), torch.device("cpu"), forward=options, default_template=DEFAULT_TEMPLATE
    )
    second.load()
    assert list((tmp_path / "onnx").glob("*/model.onnx")) == [exported]
    assert exported.stat().st_mtime_ns == exported_at

    template = "The customer writes about {}!"
    expected = (
        pipeline_answers(nli_model_dir, LABELS, False, None)
        + pipeline_answers(nli_model_dir, LABELS, True, None)
        + pipeline_answers(nli_model_dir, LABELS, False, template)
    )
    instances = (
        [Instance(text, tuple(LABELS)) for text in EXACTNESS_TEXTS]
        + [Instance(text, tuple(LABELS), True) for text in EXACTNESS_TEXTS]
        + [Instance(text, tuple(LABELS), False, template) for text in EXACTNESS_TEXTS]
    )
    assert_same_answers(expected, second.predict(instances))


def test_onnx_export_of_a_bert_runs_fused_exact_kernels(bert_nli_dir: Path, tmp_path: Path) -> None:
    """The cached export holds ONNX Runtime's fused kernels (what makes it as fast as PyTorch),
    with erf GELU only: the tanh approximations (FastGelu) would leave the 1e-5 bound.

    The last layer computes the first token's query only (model_server.first_token_layer), a
    pattern the Attention fusion does not know: its attention stays MatMul/Softmax/MatMul,
    on one query row per sequence."""
    import onnx

    options = forward_options(runtime="onnxruntime", cache_dir=str(tmp_path), warm_up=False)
    NliBackend(
        str(bert_nli_dir), torch.device("cpu"), forward=options, default_template=DEFAULT_TEMPLATE
    ).load()
    [exported] = list((tmp_path / "onnx").glob("*/model.onnx"))
    operators = Counter(node.op_type for node in onnx.load(exported).graph.node)
    layers = 2  # the tiny BERT's
    assert operators["Attention"] == layers - 1
    assert operators["Softmax"] == 1
    assert operators["BiasGelu"] == layers
    assert operators["SkipLayerNormalization"] == 2 * layers
    assert operators["EmbedLayerNormalization"] == 1
    assert not {"FastGelu", "GemmFastGelu"} & operators.keys()
    assert not list((tmp_path / "onnx").glob("*/plain.onnx"))


def test_onnx_runtime_refuses_half_precision() -> None:
    with pytest.raises(ValueError, match="float32 only|needs a CUDA device"):
        NliBackend(
            "unused",
            torch.device("cpu"),
            forward=forward_options(runtime="onnxruntime", dtype="float16"),
            default_template=DEFAULT_TEMPLATE,
        )
