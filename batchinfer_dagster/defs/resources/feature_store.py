"""The feature store resource: the ``features`` table here, a Vertex AI FeatureView in
``resources.vertex_feature_store`` (imported only when configured: dagster-gcp's BigQuery
resource pulls in BigQuery and pandas, about half of a run worker's import time on the local
path, bench/bench_launcher.py)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager

from dagster import ConfigurableResource

from batchinfer_dagster.clients.feature_store import FeatureStore, LocalFeatureStore
from batchinfer_dagster.defs.resources.database import DatabaseResource


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
