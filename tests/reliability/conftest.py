"""Fixtures of the reliability tests: one real model server per session, a Dagster instance."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from batchinfer_dagster import db
from batchinfer_dagster.settings import Settings
from batchinfer_testing.model_server import ModelServer, running_model_server


@pytest.fixture(scope="session")
def model_server() -> Iterator[ModelServer]:
    """The real model server (embedding backend) shared by the tests that do not kill it."""
    with running_model_server() as server:
        yield server


@pytest.fixture(scope="module")
def cold_model_server() -> Iterator[ModelServer]:
    """A model server of the test module's own, without the warm-up of every shape
    (``MODEL_WARMUP``), for tests that stop, continue or outlast it: on a loaded 2-core machine
    the warm-up alone passed the 240 s start bound, and their faults are not the model's."""
    with running_model_server(MODEL_WARMUP="false") as server:
        yield server


@pytest.fixture
def sqlite_settings(tmp_path: Path, model_server: ModelServer) -> Iterator[Settings]:
    """Embedded defaults (SQLite, local queue) on the real model server, short waits."""
    yield Settings(
        home=tmp_path,
        model_url=model_server.url,
        pull_timeout_seconds=0.3,
        batch_size=64,
        batch_max_wait_seconds=0,
        feature_wait_seconds=0,
        ack_deadline_seconds=2,
    )
    db.dispose_engines()
