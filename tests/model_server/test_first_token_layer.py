"""A BERT classifier whose last layer computes the first token only gives the same logits."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from model_server.first_token_layer import FirstTokenBertLayer, last_layer_for_first_token

# Pairs of very different lengths, so the batch is padded (some rows mostly padding).
PAIRS = [
    ["Hi", "This example is billing."],
    ["The app crashes on my phone every time I open it. " * 6, "This example is mobile."],
    ["Ünïcödé — ça ne marche pas 🙃", "This example is website."],
    ["password reset?", "This example is account access."],
]
TOLERANCE = 1e-5


def logits(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.inference_mode():
        return model(**inputs).logits


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_first_token_last_layer_gives_the_full_models_logits(
    bert_nli_dir: Path, attention: str
) -> None:
    """Both attention implementations: PyTorch serves with sdpa, the ONNX export uses eager."""
    full = AutoModelForSequenceClassification.from_pretrained(
        bert_nli_dir, attn_implementation=attention
    ).eval()
    pruned = copy.deepcopy(full)
    assert last_layer_for_first_token(pruned) is True
    assert isinstance(pruned.bert.encoder.layer[-1], FirstTokenBertLayer)
    assert not isinstance(pruned.bert.encoder.layer[0], FirstTokenBertLayer)
    tokenizer = AutoTokenizer.from_pretrained(bert_nli_dir)
    inputs = tokenizer(PAIRS, padding=True, truncation=True, return_tensors="pt")
    assert not inputs["attention_mask"].all(), "the batch must hold padding"

    want, got = logits(full, dict(inputs)), logits(pruned, dict(inputs))
    assert got.shape == want.shape == (len(PAIRS), full.config.num_labels)
    assert torch.max(torch.abs(got - want)).item() <= TOLERANCE
    assert len({round(row[0].item(), 4) for row in want}) == len(PAIRS), "rows should differ"
    # Each row alone (no padding at all) gives its batched logits too.
    for index, pair in enumerate(PAIRS):
        alone = tokenizer([pair], truncation=True, return_tensors="pt")
        assert torch.max(torch.abs(logits(pruned, dict(alone))[0] - want[index])) <= TOLERANCE


def test_applying_it_twice_keeps_one_first_token_layer(bert_nli_dir: Path) -> None:
    model = AutoModelForSequenceClassification.from_pretrained(bert_nli_dir).eval()
    assert last_layer_for_first_token(model) is True
    assert last_layer_for_first_token(model) is True
    last = model.bert.encoder.layer[-1]
    assert isinstance(last, FirstTokenBertLayer)
    assert not isinstance(last.layer, FirstTokenBertLayer)


def test_models_whose_head_reads_other_tokens_are_left_as_they_are(bart_nli_dir: Path) -> None:
    """BART's head reads each row's last <eos>, not the first token: no change."""
    model = AutoModelForSequenceClassification.from_pretrained(bart_nli_dir).eval()
    before = [type(module) for module in model.modules()]
    assert last_layer_for_first_token(model) is False
    assert [type(module) for module in model.modules()] == before


def test_a_model_in_training_mode_is_left_as_it_is(bert_nli_dir: Path) -> None:
    """Training reads every token's output (gradients, dropout): only inference is changed."""
    model = AutoModelForSequenceClassification.from_pretrained(bert_nli_dir).train()
    assert last_layer_for_first_token(model) is False
    assert not isinstance(model.bert.encoder.layer[-1], FirstTokenBertLayer)
