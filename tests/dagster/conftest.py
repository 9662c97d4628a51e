"""Fixtures of the Dagster tests: one real model server per session, settings per test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from batchinfer_dagster.settings import Settings
from batchinfer_testing.model_server import running_model_server


@pytest.fixture(scope="session")
def model_server_url() -> Iterator[str]:
    """Our model server as a real process with the packaged all-MiniLM embedding model."""
    with running_model_server() as server:
        yield server.url


@pytest.fixture
def pipeline_settings(queue_settings: Settings, model_server_url: str) -> Settings:
    """Every app database × every queue backend, the real model server, short waits."""
    return queue_settings.model_copy(
        update={"model_url": model_server_url, "pull_timeout_seconds": 0.3, "batch_size": 8}
    )
