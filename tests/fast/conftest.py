"""The fast tier: SQLite app database, in-memory fakes for the queue, feature store and model."""

from __future__ import annotations

from pathlib import Path

import pytest

from batchinfer_dagster.settings import Settings
from batchinfer_testing.deployment import migrate


@pytest.fixture
def fast_settings(tmp_path: Path) -> Settings:
    """Embedded defaults on a fresh SQLite file; batches close at once; small chunks."""
    settings = Settings(home=tmp_path, batch_max_wait_seconds=0, model_chunk_size=2, batch_size=8)
    migrate(settings)
    return settings
