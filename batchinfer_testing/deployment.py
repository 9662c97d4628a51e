"""A deployment for a test or a benchmark: its resources, a migrated database, publishing, rows.

Everything goes through ``batchinfer_dagster.defs.deployments.resources_for``, the code location's
own choice of implementations; a test swaps one system by passing an override
(``request_queue=…``, ``model_server=…``), as Dagster's ``resources=`` does.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import httpx
import sqlalchemy as sa
from dagster import ConfigurableResource
from sqlalchemy import Engine

from batchinfer_dagster import db
from batchinfer_dagster.chunks import chunked
from batchinfer_dagster.clients.feature_store import LocalFeatureStore
from batchinfer_dagster.clients.model_client import HttpModelClient
from batchinfer_dagster.clients.pubsub_queue import create_topology
from batchinfer_dagster.clients.queue import RequestQueue
from batchinfer_dagster.defs.deployments import pubsub_queue_for, resources_for
from batchinfer_dagster.defs.resources.model_server import HttpModelServer, ModelServerResource
from batchinfer_dagster.ledger import request_payload
from batchinfer_dagster.records import LOAD_CHUNK, add_records
from batchinfer_dagster.settings import Settings
from batchinfer_testing.model_server import REPO_ROOT

if TYPE_CHECKING:
    from batchinfer_testing.services import PubSubEmulator

TEXTS = [
    json.loads(line)["text"]
    for line in (REPO_ROOT / "bench" / "data" / "support_messages.jsonl").read_text().splitlines()
]


def migrate(settings: Settings) -> None:
    """The deploy run's step: the settings' database at the newest schema (idempotent)."""
    engine = db.create_app_engine(settings.resolved_database_url)
    try:
        if db.current_revision(engine) != db.head_revision():
            db.upgrade(engine)
    finally:
        engine.dispose()


def resources_of(settings: Settings, **overrides: ConfigurableResource) -> dict[str, Any]:
    """The resources of ``settings`` on a migrated database, with ``overrides`` swapped in."""
    migrate(settings)
    return {**resources_for(settings).as_dict(), **overrides}


def engine_of(settings: Settings) -> Engine:
    """The engine of the settings' database, migrated first."""
    return resources_of(settings)["database"].get_engine()


def model_server_of(settings: Settings, **fields: Any) -> ModelServerResource:
    """The settings' model server resource with some fields changed (retries, delays)."""
    resource = resources_for(settings).model_server
    return type(resource)(**{**resource._get_non_default_public_field_values(), **fields})  # noqa: SLF001


def model_client_of(
    settings: Settings, *, auth: httpx.Auth | None = None, **changes: Any
) -> HttpModelClient:
    """An HTTP client of the settings' model server, some config fields changed (``url``, …).

    The config is the one ``HttpModelServer`` builds from ``settings``, so a test states only
    what it changes and every other value is the configured one; the caller closes the client.
    """
    resource = resources_for(settings).model_server
    if not isinstance(resource, HttpModelServer):
        raise TypeError(f"BATCHINFER_MODEL_URL={settings.model_url} is not an HTTP model server")
    return HttpModelClient(dataclasses.replace(resource.config(), **changes), auth=auth)


def open_queue(settings: Settings) -> RequestQueue:
    """A client of the settings' request queue; the caller closes it."""
    return resources_of(settings)["request_queue"].client()


def publish(settings: Settings, payloads: Sequence[bytes]) -> list[str]:
    queue = open_queue(settings)
    try:
        return queue.publish(list(payloads))
    finally:
        queue.close()


def publish_json(settings: Settings, bodies: Iterable[object]) -> list[str]:
    return publish(settings, [json.dumps(body).encode() for body in bodies])


def id_payloads(record_ids: Sequence[int]) -> list[bytes]:
    return [request_payload(i) for i in record_ids]


def rows(settings: Settings, table: sa.Table, *where: sa.ColumnElement) -> list[sa.Row]:
    with engine_of(settings).connect() as connection:
        return connection.execute(sa.select(table).where(*where)).all()


def load_records(settings: Settings, count: int, *, words: int = 8) -> list[int]:
    """``count`` short, distinct records, imported into the settings' feature store."""
    texts = [" ".join(TEXTS[i % len(TEXTS)].split()[:words]) + f" #{i}" for i in range(count)]
    engine = engine_of(settings)
    ids: list[int] = []
    for chunk in chunked(texts, LOAD_CHUNK):
        ids += add_records(engine, chunk)
    with resources_of(settings)["feature_store"].open() as store:
        imported = store.import_records()
    if imported.total_records < count:
        raise AssertionError(f"imported {imported.total_records} records, want {count}")
    return ids


def local_feature_store(settings: Settings) -> LocalFeatureStore:
    """The ``features`` table of the settings' database, which tests also write directly."""
    return LocalFeatureStore(engine_of(settings))


def drain(queue: RequestQueue, expected: int, timeout: float = 30) -> list:
    """Pull until ``expected`` deliveries arrived (Pub/Sub may hand them out in pieces)."""
    got: list = []
    deadline = time.monotonic() + timeout
    while len(got) < expected and time.monotonic() < deadline:
        got.extend(queue.pull(max_messages=expected - len(got), timeout=2))
    return got


def add_features(settings: Settings, record_ids: range | list[int]) -> None:
    store = local_feature_store(settings)
    store.upsert([(i, f"I was charged twice for order {i}, please refund") for i in record_ids])


def queue_is_empty(settings: Settings) -> bool:
    queue = open_queue(settings)
    try:
        return queue.pull(10, 1.0) == []
    finally:
        queue.close()


# Names unique within this process (databases, Pub/Sub topics of one test).
_names = itertools.count()


def unique_name(prefix: str) -> str:
    return f"{prefix}_{os.getpid()}_{next(_names)}"


def pubsub_settings(base: Settings, emulator: PubSubEmulator, **overrides: object) -> Settings:
    """``base`` switched to the emulator with a topology of its own, created now."""
    name = unique_name("q")
    settings = base.model_copy(
        update={
            "queue": "pubsub",
            "pubsub_emulator_host": emulator.host,
            "pubsub_topic": f"{name}-topic",
            "pubsub_subscription": f"{name}-sub",
            "pubsub_dead_letter_topic": f"{name}-dlq",
            "pubsub_dead_letter_subscription": f"{name}-dlq-sub",
            **overrides,
        }
    )
    create_topology(pubsub_queue_for(settings).topology())
    return settings
