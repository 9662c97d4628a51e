"""The deployment's clients built from ``Settings`` without Dagster, for the everyday commands.

``batchinfer status``, ``publish``, ``predict``, ``prediction`` and ``dead-letters`` open the
database, the queue, the feature store and the model server and nothing else; importing Dagster
for its resources cost them about 0.45 s of a 1.4 s start (docs/benchmarks.md, "First hour").
``Connections`` builds the same client configs from the same settings as the resources of
``defs.deployments`` do for the code location (``tests/fast/test_connections.py`` holds the two
equal for every implementation), and imports each client only when it is opened.

The one exception is a Vertex AI feature store: its BigQuery client comes from dagster-gcp's
``BigQueryResource``, so ``feature_store`` opens it through the Dagster resource.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from batchinfer_dagster.settings import VERTEX_SCHEME, Settings

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from batchinfer_dagster.clients.feature_store import FeatureStore
    from batchinfer_dagster.clients.model_client import HttpModelClientConfig, ModelClient
    from batchinfer_dagster.clients.pubsub_queue import PubSubTopology
    from batchinfer_dagster.clients.queue import LocalQueueConfig, RequestQueue
    from batchinfer_dagster.clients.vertex_model_client import VertexEndpoint
    from batchinfer_protocol.zero_shot import PredictParameters


@dataclass(frozen=True)
class Connections:
    """Opens the clients of the deployment that ``settings`` describe; each ``with`` block gets a
    new client and closes it on the way out."""

    settings: Settings

    def engine(self) -> Engine:
        """The app database's process-wide engine (``db.engine_for``: checks the schema once)."""
        from batchinfer_dagster import db

        return db.engine_for(self.settings.resolved_database_url)

    def local_queue_config(self) -> LocalQueueConfig:
        from batchinfer_dagster.clients.queue import LocalQueueConfig

        return LocalQueueConfig(
            lease_seconds=self.settings.ack_deadline_seconds,
            max_delivery_attempts=self.settings.max_delivery_attempts,
        )

    def pubsub_topology(self) -> PubSubTopology:
        from batchinfer_dagster.clients.pubsub_queue import PubSubTopology

        settings = self.settings
        return PubSubTopology(
            project=settings.pubsub_project,
            topic=settings.pubsub_topic,
            subscription=settings.pubsub_subscription,
            dead_letter_topic=settings.pubsub_dead_letter_topic,
            dead_letter_subscription=settings.pubsub_dead_letter_subscription,
            emulator_host=settings.pubsub_emulator_host,
            ack_deadline_seconds=settings.ack_deadline_seconds,
            max_delivery_attempts=settings.max_delivery_attempts,
        )

    @contextmanager
    def request_queue(self) -> Iterator[RequestQueue]:
        """The local queue table or Pub/Sub, as ``BATCHINFER_QUEUE`` says; raises
        ``QueueUnavailableError`` when Pub/Sub cannot be reached."""
        queue: RequestQueue
        if self.settings.queue == "pubsub":
            from batchinfer_dagster.clients.pubsub_queue import PubSubQueue

            queue = PubSubQueue(self.pubsub_topology())
        else:
            from batchinfer_dagster.clients.queue import LocalQueue

            queue = LocalQueue(self.engine(), self.local_queue_config())
        try:
            yield queue
        finally:
            queue.close()

    @contextmanager
    def feature_store(self) -> Iterator[FeatureStore]:
        """The ``features`` table, or the Vertex AI FeatureView (through Dagster's resource)."""
        if self.settings.feature_store == "vertex":
            from batchinfer_dagster.defs.deployments import resources_for

            with resources_for(self.settings).feature_store.open() as store:
                yield store
            return
        from batchinfer_dagster.clients.feature_store import LocalFeatureStore

        store = LocalFeatureStore(self.engine())
        try:
            yield store
        finally:
            store.close()

    def parameters(self) -> PredictParameters:
        """The labels, template and label descriptions every prediction request carries."""
        from batchinfer_protocol.zero_shot import PredictParameters

        settings = self.settings
        return PredictParameters(
            tuple(settings.labels),
            settings.multi_label,
            settings.hypothesis_template,
            {label: tuple(texts) for label, texts in settings.label_descriptions.items()},
        )

    def is_vertex_endpoint(self) -> bool:
        return self.settings.model_url.startswith(VERTEX_SCHEME)

    def http_model_config(self) -> HttpModelClientConfig:
        from batchinfer_dagster.clients.model_client import HttpModelClientConfig

        settings = self.settings
        return HttpModelClientConfig(
            url=settings.model_url,
            timeout_seconds=settings.model_timeout_seconds,
            chunk_size=settings.model_chunk_size,
            max_request_bytes=settings.model_max_request_bytes,
        )

    def vertex_endpoint(self) -> VertexEndpoint:
        from batchinfer_dagster.clients.vertex_model_client import VertexEndpoint

        settings = self.settings
        return VertexEndpoint(
            url=settings.model_url,
            api_endpoint=settings.vertex_prediction_endpoint,
            timeout_seconds=settings.model_timeout_seconds,
            chunk_size=settings.model_chunk_size,
            max_request_bytes=settings.model_max_request_bytes,
        )

    @contextmanager
    def model_client(self) -> Iterator[ModelClient]:
        """Our HTTP model server (with Google ID tokens where ``BATCHINFER_MODEL_AUTH`` says),
        or a Vertex AI endpoint for a ``vertex://`` URL."""
        client: ModelClient
        if self.is_vertex_endpoint():
            from batchinfer_dagster.clients.vertex_model_client import VertexModelClient

            client = VertexModelClient(self.vertex_endpoint())
        else:
            from batchinfer_dagster.clients.model_client import HttpModelClient

            config = self.http_model_config()
            auth = None
            if self.settings.model_auth == "google-id-token":
                from batchinfer_dagster.clients.google_id_token import GoogleIdTokenAuth

                auth = GoogleIdTokenAuth(config.url)
            client = HttpModelClient(config, auth=auth)
        try:
            yield client
        finally:
            client.close()
