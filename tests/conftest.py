"""Shared fixtures: real PostgreSQL and Pub/Sub emulator, and settings for each backend.

``app_settings`` is parametrized over the app database (SQLite file, PostgreSQL database), so a
test that takes it runs on both. ``queue_settings`` adds the queue backend (local table, emulator).
The server-backed parameters carry the ``postgres`` and ``pubsub`` marks, so the fast tier
(``make test-fast``: ``-m "not postgres and not pubsub"``) runs the SQLite and local-queue half.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from dagster import DagsterInstance

from batchinfer_dagster import db
from batchinfer_dagster.settings import Settings
from batchinfer_testing.deployment import migrate, pubsub_settings, unique_name
from batchinfer_testing.services import PostgresServer, PubSubEmulator
from tests.services import postgres_server, pubsub_emulator

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    with postgres_server() as server:
        yield server


@pytest.fixture(scope="session")
def emulator() -> Iterator[PubSubEmulator]:
    previous = os.environ.get("PUBSUB_EMULATOR_HOST")
    with pubsub_emulator() as running:
        os.environ["PUBSUB_EMULATOR_HOST"] = running.host
        yield running
    if previous is None:
        os.environ.pop("PUBSUB_EMULATOR_HOST", None)
    else:
        os.environ["PUBSUB_EMULATOR_HOST"] = previous


@pytest.fixture(scope="session", autouse=True)
def scratch_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A ``BATCHINFER_HOME`` for the session: no test writes to the user's own data directory.

    ``DAGSTER_HOME`` is unset for the same reason (the CLI records asset events there); tests
    that need a Dagster instance make their own.
    """
    saved = {name: os.environ.get(name) for name in ("BATCHINFER_HOME", "DAGSTER_HOME")}
    home = tmp_path_factory.mktemp("batchinfer-home")
    os.environ["BATCHINFER_HOME"] = str(home)
    os.environ.pop("DAGSTER_HOME", None)
    yield home
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture
def instance() -> Iterator[DagsterInstance]:
    """A throwaway in-memory Dagster instance (sensor ticks, runs, partitions)."""
    with DagsterInstance.ephemeral() as ephemeral:
        yield ephemeral


@pytest.fixture
def postgres_url(postgres: PostgresServer) -> str:
    """A fresh, empty PostgreSQL database for one test."""
    return postgres.create_database(unique_name("t"))


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'batchinfer.db'}"
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def app_settings(database_url: str, tmp_path: Path) -> Iterator[Settings]:
    """Settings on a fresh, migrated app database (SQLite and PostgreSQL), local queue and
    feature store."""
    # Every pull closes its batches at once (closing max wait 0) unless a test sets the wait,
    # and a pull of an empty queue waits 0.3 s, not the embedded 4 s (a tick's long-poll).
    settings = Settings(
        home=tmp_path,
        database_url=database_url,
        batch_max_wait_seconds=0,
        pull_timeout_seconds=0.3,
    )
    migrate(settings)
    yield settings
    db.dispose_engines()


@pytest.fixture(params=["local", pytest.param("pubsub", marks=pytest.mark.pubsub)])
def queue_settings(request: pytest.FixtureRequest, app_settings: Settings) -> Settings:
    """``app_settings`` with each queue backend: the SQL table and the Pub/Sub emulator.

    The ack deadline is Pub/Sub's shortest (10 s) on both, so redelivery tests stay short.
    """
    settings = app_settings.model_copy(update={"ack_deadline_seconds": 10})
    if request.param == "local":
        return settings
    return pubsub_settings(settings, request.getfixturevalue("emulator"))
