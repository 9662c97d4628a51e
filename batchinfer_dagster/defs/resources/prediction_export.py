"""The BigQuery predictions table the export asset writes (Google Cloud deployments only).

Its own module so that only a deployment with ``BATCHINFER_PREDICTIONS_BIGQUERY_TABLE`` set
imports dagster-gcp (BigQuery, pandas): a laptop's code location never does.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from dagster import ConfigurableResource
from dagster_gcp import BigQueryResource
from pydantic import Field

from batchinfer_dagster.clients.bigquery_predictions import BigQueryPredictionTable
from batchinfer_dagster.defs.resources.database import DatabaseResource
from batchinfer_dagster.settings import described


class PredictionExportResource(ConfigurableResource):
    """The app database the predictions come from and the BigQuery table they go to.

    The BigQuery client comes from dagster-gcp's ``BigQueryResource`` (project, location and,
    outside Google Cloud, base64 service-account credentials as an ``EnvVar``).
    """

    database: DatabaseResource
    bigquery: BigQueryResource
    table: str = Field(description=described("predictions_bigquery_table"))
    timeout_seconds: float = Field(description=described("predictions_bigquery_timeout_seconds"))

    @contextmanager
    def open(self) -> Iterator[BigQueryPredictionTable]:
        """The target table on a client of its own, closed afterwards."""
        with self.bigquery.get_client() as client:
            try:
                yield BigQueryPredictionTable(
                    client=client, table=self.table, timeout_seconds=self.timeout_seconds
                )
            finally:
                client.close()
