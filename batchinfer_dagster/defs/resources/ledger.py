"""The request ledger's policy: batch size, pull bounds, run attempts, the wait for features.

The ledger lives in the app database (``DatabaseResource``); this resource adds the numbers that
shape its batches and retries, so they show in the Dagster UI next to the systems they bound.
Every field is required: ``deployments.py`` fills them from ``Settings``, which alone holds their
defaults and bounds.
"""

from __future__ import annotations

from datetime import timedelta

from dagster import ConfigurableResource
from pydantic import Field
from sqlalchemy import Engine

from batchinfer_dagster.defs.resources.database import DatabaseResource
from batchinfer_dagster.ledger.closing import BatchClosing
from batchinfer_dagster.settings import described


class LedgerResource(ConfigurableResource):
    """What the sensor and the prediction runs need to move requests through the ledger."""

    database: DatabaseResource
    batch_size: int = Field(description=described("batch_size"))
    batch_max_wait_seconds: float = Field(description=described("batch_max_wait_seconds"))
    max_pull: int = Field(description=described("max_pull"))
    pull_timeout_seconds: float = Field(description=described("pull_timeout_seconds"))
    max_attempts: int = Field(description=described("max_attempts"))
    feature_wait_seconds: float = Field(description=described("feature_wait_seconds"))

    def get_engine(self) -> Engine:
        return self.database.get_engine()

    def batch_closing(self) -> BatchClosing:
        return BatchClosing(
            max_size=self.batch_size, max_wait=timedelta(seconds=self.batch_max_wait_seconds)
        )

    def feature_wait(self) -> timedelta:
        return timedelta(seconds=self.feature_wait_seconds)
