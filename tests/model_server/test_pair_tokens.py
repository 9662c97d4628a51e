"""Each text and hypothesis tokenized once, pairs joined: the pipeline's token ids exactly.

The reference is the tokenizer called on the whole pair as the zero-shot pipeline calls it
(`truncation="only_first"`, and without truncation when the text is too short to cut), for a
BERT WordPiece and a BART byte-level BPE tokenizer, with texts past the model's maximum length
(48 and 56 tokens here) and hypotheses too long to leave the text anything.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from batchinfer_testing.backends import DEFAULT_TEMPLATE, forward_options
from model_server.backends.base import Instance
from model_server.backends.nli import NliBackend
from model_server.pair_tokens import PairEncoder, supports_pair_assembly

WORDS = [
    "my",
    "app",
    "crashes",
    "when",
    "I",
    "pay",
    "the",
    "invoice",
    "twice",
    "and",
    "the",
    "login",
    "page",
    "never",
    "loads",
]
TEXTS = [
    "Hi",
    "x",
    "The app crashes on my phone every time I open it.",
    "I was charged twice for my subscription and want a refund. " * 12,
    "Ünïcödé — ça ne marche pas 🙃 la page ne charge pas",
    "My login works on one computer but not on the other </s> and [SEP] either.",
    "  leading and trailing spaces  ",
]
HYPOTHESES = [
    "This example is billing.",
    "This example is account access.",
    "The customer writes about {}!".format("a very " * 20 + "long label"),
    "This example is " + "very " * 60 + "long.",
]


def pipeline_ids(tokenizer: object, text: str, hypothesis: str) -> dict[str, list[int]]:
    """The pair as the pipeline tokenizes it (ZeroShotClassificationPipeline's
    `_parse_and_tokenize`): only_first, or untruncated when the text is too short to cut."""
    try:
        encoded = tokenizer([[text, hypothesis]], truncation="only_first")  # type: ignore[operator]
    except Exception as error:
        if "too short" not in str(error):
            raise
        encoded = tokenizer([[text, hypothesis]], truncation=False)  # type: ignore[operator]
    return {name: encoded[name][0] for name in encoded if name != "attention_mask"}


def test_pairs_are_the_pipelines_token_ids(nli_model_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(nli_model_dir)
    assert supports_pair_assembly(tokenizer)
    rng = random.Random(5)
    texts = TEXTS + [" ".join(rng.choices(WORDS, k=rng.randint(1, 70))) for _ in range(40)]
    pairs = [(t, h) for t in range(len(texts)) for h in range(len(HYPOTHESES))]
    joined = PairEncoder(tokenizer).encode(texts, HYPOTHESES, pairs)
    lengths = set()
    for (t, h), ids in zip(pairs, joined, strict=True):
        assert ids == pipeline_ids(tokenizer, texts[t], HYPOTHESES[h]), (texts[t], HYPOTHESES[h])
        lengths.add(len(ids["input_ids"]))
    # Pairs cut at the model's maximum, and pairs longer than it (the text too short to cut).
    assert tokenizer.model_max_length in lengths
    assert max(lengths) > tokenizer.model_max_length


def test_left_truncation_is_followed(bert_nli_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(bert_nli_dir, truncation_side="left")
    text = " ".join(WORDS * 5)
    [ids] = PairEncoder(tokenizer).encode([text], [HYPOTHESES[0]], [(0, 0)])
    assert ids == pipeline_ids(tokenizer, text, HYPOTHESES[0])
    right = PairEncoder(AutoTokenizer.from_pretrained(bert_nli_dir)).encode(
        [text], [HYPOTHESES[0]], [(0, 0)]
    )[0]
    assert ids["input_ids"] != right["input_ids"]


def test_a_pool_tokenizes_each_text_and_hypothesis_once(
    bart_nli_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = NliBackend(
        str(bart_nli_dir),
        torch.device("cpu"),
        max_batch_size=8,
        forward=forward_options(),
        default_template=DEFAULT_TEMPLATE,
    )
    backend.load()
    assert backend.pair_encoder is not None
    batches: list[list[str]] = []
    plain = backend.pair_encoder.plain
    original = plain.encode_batch

    class Spy:
        def __getattr__(self, name: str) -> object:
            return getattr(plain, name)

        def encode_batch(self, items: list[str], **kwargs: object) -> object:
            batches.append(list(items))
            return original(items, **kwargs)

    monkeypatch.setattr(backend.pair_encoder, "plain", Spy())
    labels = ("mobile", "website", "billing", "account access")
    instances = [Instance(text, labels) for text in TEXTS[:3]] + [Instance(TEXTS[0], labels)]
    prepared = backend.prepare(instances)
    assert batches == [TEXTS[:3], [f"This example is {label}." for label in labels]]
    assert len(prepared.encodings) == 3 * 4  # the repeated text's pairs are shared
