"""The Vertex AI feature store resource: a BigQuery source table synced into a FeatureView.

Its own module so that only a deployment configured for Vertex imports dagster-gcp (BigQuery,
pandas): the local path's run workers start without them.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from dagster_gcp import BigQueryResource
from pydantic import Field

from batchinfer_dagster.clients.feature_store import FeatureStore
from batchinfer_dagster.defs.resources.feature_store import FeatureStoreResource
from batchinfer_dagster.settings import described

if TYPE_CHECKING:
    from batchinfer_dagster.clients.vertex_feature_store import VertexFeatureView


class VertexFeatureStoreResource(FeatureStoreResource):
    """A BigQuery source table synced into a Vertex AI online store's FeatureView.

    The BigQuery client comes from dagster-gcp's ``BigQueryResource`` (project, location and,
    outside Google Cloud, base64 service-account credentials as an ``EnvVar``).
    """

    bigquery: BigQueryResource
    region: str = Field(description=described("vertex_region"))
    online_store: str = Field(description=described("vertex_online_store"))
    feature_view: str = Field(description=described("vertex_feature_view"))
    bigquery_table: str = Field(description=described("vertex_bigquery_table"))
    admin_endpoint: str | None = Field(description=described("vertex_admin_endpoint"))
    serving_endpoint: str | None = Field(description=described("vertex_serving_endpoint"))
    sync_timeout_seconds: float = Field(description=described("vertex_sync_timeout_seconds"))

    def view(self) -> VertexFeatureView:
        """The client's config: this resource's fields, in the one object the client takes."""
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
