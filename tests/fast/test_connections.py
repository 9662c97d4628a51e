"""``Connections`` (the CLI's clients without Dagster) and the Dagster resources of
``defs.deployments`` build equal client configs from the same settings, for every
implementation: the two paths from ``Settings`` to a client cannot drift apart.

Every value differs from its default and from the others of its type, so a field mapped from
the wrong setting (an ack deadline for a delivery count, a timeout for a retry delay) fails.
"""

from __future__ import annotations

from pathlib import Path

from batchinfer_dagster.connections import Connections
from batchinfer_dagster.defs.deployments import resources_for
from batchinfer_dagster.defs.resources.model_server import HttpModelServer, VertexModelEndpoint
from batchinfer_dagster.defs.resources.request_queue import LocalRequestQueue, PubSubRequestQueue
from batchinfer_dagster.settings import Settings

DISTINCT = {
    "ack_deadline_seconds": 41,
    "max_delivery_attempts": 7,
    "model_timeout_seconds": 13.5,
    "model_chunk_size": 3,
    "model_max_request_bytes": 123_457,
    "labels": ("alpha", "beta"),
    "multi_label": True,
    "hypothesis_template": "It is about {}.",
}


def test_the_local_queue_and_an_http_model_server_are_configured_alike(tmp_path: Path) -> None:
    settings = Settings(
        home=tmp_path, model_url="http://model.example:8123", model_auth="google-id-token",
        **DISTINCT,
    )  # fmt: skip
    connections, resources = Connections(settings), resources_for(settings)
    assert isinstance(resources.request_queue, LocalRequestQueue)
    assert connections.local_queue_config() == resources.request_queue.config()
    assert isinstance(resources.model_server, HttpModelServer)
    assert not connections.is_vertex_endpoint()
    assert connections.http_model_config() == resources.model_server.config()
    assert connections.parameters() == resources.model_server.parameters()


def test_pubsub_and_a_vertex_endpoint_are_configured_alike(tmp_path: Path) -> None:
    settings = Settings(
        home=tmp_path,
        queue="pubsub",
        pubsub_project="project-a",
        pubsub_topic="topic-b",
        pubsub_subscription="subscription-c",
        pubsub_dead_letter_topic="dead-topic-d",
        pubsub_dead_letter_subscription="dead-subscription-e",
        pubsub_emulator_host="127.0.0.1:8686",
        model_url="vertex://projects/p/locations/europe-west4/endpoints/42",
        vertex_prediction_endpoint="127.0.0.1:9443",
        **DISTINCT,
    )
    connections, resources = Connections(settings), resources_for(settings)
    assert isinstance(resources.request_queue, PubSubRequestQueue)
    assert connections.pubsub_topology() == resources.request_queue.topology()
    assert isinstance(resources.model_server, VertexModelEndpoint)
    assert connections.is_vertex_endpoint()
    assert connections.vertex_endpoint() == resources.model_server.endpoint()
    assert connections.parameters() == resources.model_server.parameters()
