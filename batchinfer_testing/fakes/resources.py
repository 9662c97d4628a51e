"""A Dagster resource per in-memory fake, and the resources of a fast deployment.

A resource's client must outlive one ``open``: the sensor opens the queue on every tick and a run
opens the model client once, yet a test scripts and inspects one fake. Each resource therefore
names its fake in a registry of this process (``name``), which is why the fast tier runs in
process (``materialize``, ``execute_in_process``, ``build_sensor_context``), never in a run
worker. The fakes' ``close`` does nothing, so every ``open`` hands out the same one.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from dagster import ConfigurableResource

from batchinfer_dagster.clients.feature_store import FeatureStore
from batchinfer_dagster.clients.model_client import ModelClient
from batchinfer_dagster.clients.queue import LocalQueueConfig, RequestQueue
from batchinfer_dagster.defs.resources.feature_store import FeatureStoreResource
from batchinfer_dagster.defs.resources.model_server import ModelServerResource
from batchinfer_dagster.defs.resources.request_queue import RequestQueueResource
from batchinfer_dagster.settings import Settings
from batchinfer_testing.deployment import resources_of
from batchinfer_testing.fakes.feature_store import InMemoryFeatureStore
from batchinfer_testing.fakes.model_client import ScriptedModelClient
from batchinfer_testing.fakes.queue import InMemoryQueue

QUEUES: dict[str, InMemoryQueue] = {}
FEATURE_STORES: dict[str, InMemoryFeatureStore] = {}
MODEL_CLIENTS: dict[str, ScriptedModelClient] = {}


class InMemoryQueueResource(RequestQueueResource):
    """The ``InMemoryQueue`` registered as ``name``, made on first use with this policy."""

    name: str

    def client(self) -> RequestQueue:
        return self.fake()

    def fake(self) -> InMemoryQueue:
        if self.name not in QUEUES:
            config = LocalQueueConfig(
                lease_seconds=self.ack_deadline_seconds,
                max_delivery_attempts=self.max_delivery_attempts,
            )
            QUEUES[self.name] = InMemoryQueue(config)
        return QUEUES[self.name]


class InMemoryFeatureStoreResource(FeatureStoreResource):
    """The ``InMemoryFeatureStore`` registered as ``name`` (``database`` is not read)."""

    name: str

    @contextmanager
    def open(self) -> Iterator[FeatureStore]:
        yield self.fake()

    def fake(self) -> InMemoryFeatureStore:
        return FEATURE_STORES.setdefault(self.name, InMemoryFeatureStore())


class ScriptedModelServer(ModelServerResource):
    """The ``ScriptedModelClient`` registered as ``name``, with this resource's chunk bounds;
    another server's URL (a rollout's candidate) has its own, registered as ``name url``."""

    name: str

    def client(self, url: str | None = None) -> ModelClient:
        return self.fake(url)

    def fake(self, url: str | None = None) -> ScriptedModelClient:
        key = self.name if url is None else f"{self.name} {url}"
        if key not in MODEL_CLIENTS:
            MODEL_CLIENTS[key] = ScriptedModelClient(
                chunk_size=self.chunk_size, max_request_bytes=self.max_request_bytes
            )
        return MODEL_CLIENTS[key]


def fast_resources(settings: Settings, name: str) -> dict[str, ConfigurableResource]:
    """The resources of ``settings`` (a migrated app database) with the three systems faked.

    The fakes take the settings' own policy (lease, delivery attempts, labels, chunk bounds,
    retries); ``name`` keeps one test's fakes apart from another's.
    """
    resources: dict[str, Any] = resources_of(settings)
    queue = resources["request_queue"]
    model = resources["model_server"]
    model_fields = {field: getattr(model, field) for field in ModelServerResource.model_fields}
    return {
        **resources,
        "request_queue": InMemoryQueueResource(
            name=name,
            ack_deadline_seconds=queue.ack_deadline_seconds,
            max_delivery_attempts=queue.max_delivery_attempts,
        ),
        "feature_store": InMemoryFeatureStoreResource(name=name, database=resources["database"]),
        "model_server": ScriptedModelServer(name=name, **model_fields),
    }
