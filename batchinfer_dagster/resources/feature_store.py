"""The feature store: the ``features`` table, or a Vertex AI Feature Store FeatureView."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import TYPE_CHECKING

from dagster import ConfigurableResource
from dagster_gcp import BigQueryResource
from pydantic import Field

from batchinfer_dagster.clients.feature_store import FeatureStore, LocalFeatureStore
from batchinfer_dagster.resources.database import DatabaseResource

if TYPE_CHECKING:
    from batchinfer_dagster.clients.vertex_feature_store import VertexFeatureView


class FeatureStoreResource(ConfigurableResource, ABC):
    """Where runs read each record's text; ``open`` yields a client and closes it afterwards."""

    database: DatabaseResource

    @abstractmethod
    def open(self) -> AbstractContextManager[FeatureStore]:
        """A client for the duration of the ``with`` block."""


class LocalFeatureStoreResource(FeatureStoreResource):
    """The ``features`` table of the app database."""

    @contextmanager
    def open(self) -> Iterator[FeatureStore]:
        store = LocalFeatureStore(self.database.get_engine())
        try:
            yield store
        finally:
            store.close()


class VertexFeatureStoreResource(FeatureStoreResource):
    """A BigQuery source table synced into a Vertex AI online store's FeatureView.

    The BigQuery client comes from dagster-gcp's ``BigQueryResource`` (project, location and,
    outside Google Cloud, base64 service-account credentials as an ``EnvVar``).
    """

    bigquery: BigQueryResource
    region: str = Field(default="us-central1", description="BATCHINFER_VERTEX_REGION")
    online_store: str = Field(default="batchinfer", description="BATCHINFER_VERTEX_ONLINE_STORE")
    feature_view: str = Field(default="records", description="BATCHINFER_VERTEX_FEATURE_VIEW")
    bigquery_table: str = Field(
        description="project.dataset.table of the source (BATCHINFER_VERTEX_BIGQUERY_TABLE)."
    )
    admin_endpoint: str | None = Field(
        default=None, description="host:port of the admin API (BATCHINFER_VERTEX_ADMIN_ENDPOINT)."
    )
    serving_endpoint: str | None = Field(
        default=None,
        description="host:port of the online store (BATCHINFER_VERTEX_SERVING_ENDPOINT; PSC).",
    )
    sync_timeout_seconds: float = Field(default=1800.0, gt=0)

    def view(self) -> VertexFeatureView:
        from batchinfer_dagster.clients.vertex_feature_store import VertexFeatureView

        return VertexFeatureView(
            project=self.bigquery.project,
            bigquery_table=self.bigquery_table,
            region=self.region,
            online_store=self.online_store,
            feature_view=self.feature_view,
            admin_endpoint=self.admin_endpoint,
            serving_endpoint=self.serving_endpoint,
            sync_timeout_seconds=self.sync_timeout_seconds,
        )

    @contextmanager
    def open(self) -> Iterator[FeatureStore]:
        from batchinfer_dagster.clients.vertex_feature_store import VertexFeatureStore

        view = self.view()
        with self.bigquery.get_client() as client:
            store = VertexFeatureStore(view, self.database.get_engine(), bigquery_client=client)
            try:
                yield store
            finally:
                store.close()
