"""The fast tier: SQLite app database, in-memory fakes for the queue, feature store and model."""

from __future__ import annotations

from pathlib import Path

import pytest

from batchinfer_dagster.settings import Settings
from batchinfer_testing.deployment import migrate
from batchinfer_testing.fakes.resources import FEATURE_STORES, MODEL_CLIENTS, QUEUES


@pytest.fixture
def fast_settings(tmp_path: Path) -> Settings:
    """Embedded defaults on a fresh SQLite file; batches close at once; small chunks."""
    settings = Settings(home=tmp_path, batch_max_wait_seconds=0, model_chunk_size=2, batch_size=8)
    migrate(settings)
    return settings


@pytest.fixture(autouse=True)
def fresh_fakes() -> None:
    """Each test starts with empty fake registries (they live as long as the process).

    A test run a second time in one process (mutmut runs every test in the process that first
    collected its coverage, and forks each mutant's run from it) would otherwise find the fakes
    of its first run: the requests its scripted model already answered, messages already acked.
    """
    for registry in (QUEUES, FEATURE_STORES, MODEL_CLIENTS):
        registry.clear()
