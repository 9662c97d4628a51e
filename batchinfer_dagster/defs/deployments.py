"""The one place that turns ``Settings`` into the resources of a deployment.

``BATCHINFER_QUEUE``, ``BATCHINFER_FEATURE_STORE`` and ``BATCHINFER_MODEL_URL`` pick the local or
the Google implementation of each system (docs/architecture.md, "Configuration"). The code
location, the CLI, tests and benchmarks all build their resources here, so a laptop and Google
Cloud differ only in settings. With ``secrets_from_env`` (the code location), a database URL
that came from the environment is an ``EnvVar``: the UI shows the variable's name, not the
password; commands that call the resources outside Dagster resolve it themselves.
"""

from __future__ import annotations

from dataclasses import dataclass

from dagster import ConfigurableResource, EnvVar

from batchinfer_dagster import db
from batchinfer_dagster.defs.resources.database import (
    DatabaseResource,
    PostgresDatabase,
    SqliteDatabase,
)
from batchinfer_dagster.defs.resources.feature_store import (
    FeatureStoreResource,
    LocalFeatureStoreResource,
)
from batchinfer_dagster.defs.resources.ledger import LedgerResource
from batchinfer_dagster.defs.resources.model_server import (
    VERTEX_SCHEME,
    HttpModelServer,
    ModelServerResource,
    VertexModelEndpoint,
)
from batchinfer_dagster.defs.resources.request_queue import (
    LocalRequestQueue,
    PubSubRequestQueue,
    RequestQueueResource,
)
from batchinfer_dagster.settings import Settings, variable_of

DATABASE_URL_VARIABLE = variable_of("database_url")


@dataclass(frozen=True)
class Resources:
    """The resources of one deployment, by the names the assets, sensor and jobs use."""

    database: DatabaseResource
    ledger: LedgerResource
    request_queue: RequestQueueResource
    feature_store: FeatureStoreResource
    model_server: ModelServerResource
    # The BigQuery export's (``PredictionExportResource``), only where a table is configured.
    prediction_export: ConfigurableResource | None = None

    def as_dict(self) -> dict[str, ConfigurableResource]:
        resources = {
            "database": self.database,
            "ledger": self.ledger,
            "request_queue": self.request_queue,
            "feature_store": self.feature_store,
            "model_server": self.model_server,
        }
        if self.prediction_export is not None:
            resources["prediction_export"] = self.prediction_export
        return resources


def database_for(settings: Settings, *, secrets_from_env: bool = False) -> DatabaseResource:
    url = settings.resolved_database_url
    if db.is_sqlite(url):
        return SqliteDatabase(path=url.split(":///", 1)[-1])
    if secrets_from_env and settings.database_url is not None:
        return PostgresDatabase(database_url=EnvVar(DATABASE_URL_VARIABLE))
    return PostgresDatabase(database_url=url)


def pubsub_queue_for(settings: Settings) -> PubSubRequestQueue:
    """The Pub/Sub queue the settings name (also for ``batchinfer pubsub create``)."""
    return PubSubRequestQueue(
        project=settings.pubsub_project,
        topic=settings.pubsub_topic,
        subscription=settings.pubsub_subscription,
        dead_letter_topic=settings.pubsub_dead_letter_topic,
        dead_letter_subscription=settings.pubsub_dead_letter_subscription,
        emulator_host=settings.pubsub_emulator_host,
        ack_deadline_seconds=settings.ack_deadline_seconds,
        max_delivery_attempts=settings.max_delivery_attempts,
    )


def request_queue_for(settings: Settings, database: DatabaseResource) -> RequestQueueResource:
    if settings.queue == "pubsub":
        return pubsub_queue_for(settings)
    return LocalRequestQueue(
        database=database,
        ack_deadline_seconds=settings.ack_deadline_seconds,
        max_delivery_attempts=settings.max_delivery_attempts,
    )


def feature_store_for(settings: Settings, database: DatabaseResource) -> FeatureStoreResource:
    if settings.feature_store == "vertex":
        # Imported here: dagster-gcp (BigQuery, pandas) is for Vertex deployments only.
        from dagster_gcp import BigQueryResource

        from batchinfer_dagster.defs.resources.vertex_feature_store import (
            VertexFeatureStoreResource,
        )

        return VertexFeatureStoreResource(
            database=database,
            bigquery=BigQueryResource(project=settings.vertex_project),
            region=settings.vertex_region,
            online_store=settings.vertex_online_store,
            feature_view=settings.vertex_feature_view,
            bigquery_table=settings.vertex_bigquery_table or "",
            admin_endpoint=settings.vertex_admin_endpoint,
            serving_endpoint=settings.vertex_serving_endpoint,
            sync_timeout_seconds=settings.vertex_sync_timeout_seconds,
        )
    return LocalFeatureStoreResource(database=database)


def prediction_export_for(
    settings: Settings, database: DatabaseResource
) -> ConfigurableResource | None:
    """The BigQuery predictions table's resource, or None where no table is configured."""
    if settings.predictions_bigquery_table is None:
        return None
    # Imported here: dagster-gcp (BigQuery, pandas) is for Google Cloud deployments only.
    from dagster_gcp import BigQueryResource

    from batchinfer_dagster.defs.resources.prediction_export import PredictionExportResource

    table = settings.predictions_bigquery_table
    return PredictionExportResource(
        database=database,
        bigquery=BigQueryResource(project=table.split(".", 1)[0]),
        table=table,
        timeout_seconds=settings.predictions_bigquery_timeout_seconds,
    )


def model_server_for(settings: Settings) -> ModelServerResource:
    request = {
        "labels": list(settings.labels),
        "multi_label": settings.multi_label,
        "hypothesis_template": settings.hypothesis_template,
        "label_descriptions": {
            label: list(texts) for label, texts in settings.label_descriptions.items()
        },
        "timeout_seconds": settings.model_timeout_seconds,
        "chunk_size": settings.model_chunk_size,
        "max_request_bytes": settings.model_max_request_bytes,
        "retries": settings.model_retries,
        "retry_delay_seconds": settings.model_retry_delay_seconds,
    }
    if settings.model_url.startswith(VERTEX_SCHEME):
        return VertexModelEndpoint(
            url=settings.model_url, api_endpoint=settings.vertex_prediction_endpoint, **request
        )
    return HttpModelServer(url=settings.model_url, auth=settings.model_auth, **request)


def resources_for(settings: Settings, *, secrets_from_env: bool = False) -> Resources:
    """Every resource of the deployment that ``settings`` describe."""
    database = database_for(settings, secrets_from_env=secrets_from_env)
    return Resources(
        database=database,
        ledger=LedgerResource(
            database=database,
            batch_size=settings.batch_size,
            batch_max_wait_seconds=settings.batch_max_wait_seconds,
            max_pull=settings.max_pull,
            pull_timeout_seconds=settings.pull_timeout_seconds,
            max_attempts=settings.max_attempts,
            feature_wait_seconds=settings.feature_wait_seconds,
        ),
        request_queue=request_queue_for(settings, database),
        feature_store=feature_store_for(settings, database),
        model_server=model_server_for(settings),
        prediction_export=prediction_export_for(settings, database),
    )
