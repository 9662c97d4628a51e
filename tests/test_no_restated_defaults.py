"""A default, a bound or a variable name is written once, in ``Settings``.

Resources and client configs take required values, so a hand-built one cannot quietly differ from
what production configures (a wrong copy of a default used to be silent: production passes every
value, and only tests ever saw the copy).
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import pkgutil

import pytest
from dagster import ConfigurableResource

import batchinfer_dagster.defs.resources
from batchinfer_dagster.clients.feature_store import LocalFeatureStore
from batchinfer_dagster.clients.model_client import HttpModelClient, HttpModelClientConfig
from batchinfer_dagster.clients.pubsub_queue import PubSubQueue, PubSubTopology
from batchinfer_dagster.clients.queue import LocalQueue, LocalQueueConfig
from batchinfer_dagster.clients.vertex_feature_store import VertexFeatureStore, VertexFeatureView
from batchinfer_dagster.clients.vertex_model_client import VertexEndpoint, VertexModelClient
from batchinfer_dagster.defs.deployments import resources_for
from batchinfer_dagster.defs.sensors import process_tick
from batchinfer_dagster.settings import Settings

CONFIGS = [
    HttpModelClientConfig,
    LocalQueueConfig,
    PubSubTopology,
    VertexEndpoint,
    VertexFeatureView,
]
CLIENTS = [HttpModelClient, LocalQueue, PubSubQueue, VertexModelClient, VertexFeatureStore]
# Constructor parameters that may have defaults: collaborators a test injects (clocks, sleeps,
# transport, Google's retry objects) and the Vertex store's poll interval and fetch concurrency,
# constants of its module that no deployment sets. A new defaulted parameter must be one of these
# or a setting.
NOT_SETTINGS = {
    "auth",
    "retry",
    "bigquery_client",
    "clock",
    "sleep",
    "wall_clock",
    "fetch_retry",
    "poll_seconds",
    "max_fetch_concurrency",
}


def resource_classes() -> list[type[ConfigurableResource]]:
    """Every resource class of ``batchinfer_dagster.defs.resources``, abstract ones included."""
    found: dict[str, type[ConfigurableResource]] = {}
    for module in pkgutil.iter_modules(batchinfer_dagster.defs.resources.__path__):
        loaded = importlib.import_module(f"batchinfer_dagster.defs.resources.{module.name}")
        for value in vars(loaded).values():
            if (
                inspect.isclass(value)
                and issubclass(value, ConfigurableResource)
                and value.__module__ == loaded.__name__
            ):
                found[value.__qualname__] = value
    return list(found.values())


def test_every_resource_module_is_inspected() -> None:
    names = {cls.__name__ for cls in resource_classes()}
    assert {"LedgerResource", "HttpModelServer", "PubSubRequestQueue"} <= names
    assert {"VertexFeatureStoreResource", "LocalRequestQueue", "SqliteDatabase"} <= names


@pytest.mark.parametrize("resource", resource_classes(), ids=lambda cls: cls.__name__)
def test_resource_fields_are_required(resource: type[ConfigurableResource]) -> None:
    defaulted = [name for name, field in resource.model_fields.items() if not field.is_required()]
    assert defaulted == [], f"{resource.__name__} restates defaults of Settings: {defaulted}"


@pytest.mark.parametrize("resource", resource_classes(), ids=lambda cls: cls.__name__)
def test_resource_fields_carry_no_bounds(resource: type[ConfigurableResource]) -> None:
    """Bounds are Settings' to check (at load, in one line naming the variable)."""
    bounded = [name for name, field in resource.model_fields.items() if field.metadata]
    assert bounded == [], f"{resource.__name__} restates bounds of Settings: {bounded}"


@pytest.mark.parametrize("config", CONFIGS, ids=lambda cls: cls.__name__)
def test_client_configs_are_frozen_and_have_no_defaults(config: type) -> None:
    assert config.__dataclass_params__.frozen  # type: ignore[attr-defined]
    defaulted = [
        field.name
        for field in dataclasses.fields(config)
        if field.default is not dataclasses.MISSING
        or field.default_factory is not dataclasses.MISSING
    ]
    assert defaulted == [], f"{config.__name__} restates defaults of Settings: {defaulted}"


@pytest.mark.parametrize("client", [*CLIENTS, LocalFeatureStore], ids=lambda cls: cls.__name__)
def test_clients_take_their_config_and_default_only_collaborators(client: type) -> None:
    parameters = list(inspect.signature(client.__init__).parameters.values())[1:]
    defaulted = {p.name for p in parameters if p.default is not inspect.Parameter.empty}
    assert defaulted <= NOT_SETTINGS, f"{client.__name__} defaults {defaulted - NOT_SETTINGS}"


def test_the_tick_lease_has_no_default() -> None:
    lease = inspect.signature(process_tick).parameters["lease_seconds"]
    assert lease.default is inspect.Parameter.empty


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"queue": "pubsub", "pubsub_project": "p"},
        {"model_url": "vertex://projects/p/locations/europe-west4/endpoints/1"},
    ],
)
def test_the_resources_built_from_settings_carry_the_settings(overrides: dict[str, str]) -> None:
    settings = Settings(**overrides, ack_deadline_seconds=33, model_retries=7, max_pull=11)
    resources = resources_for(settings)
    assert resources.request_queue.ack_deadline_seconds == 33
    assert resources.model_server.retries == 7
    assert resources.ledger.max_pull == 11
