"""The request ledger's policy: batch size, pull bounds, run attempts, the wait for features.

The ledger lives in the app database (``DatabaseResource``); this resource adds the numbers that
shape its batches and retries, so they show in the Dagster UI next to the systems they bound.
"""

from __future__ import annotations

from datetime import timedelta

from dagster import ConfigurableResource
from pydantic import Field
from sqlalchemy import Engine

from batchinfer_dagster.ledger.closing import BatchClosing
from batchinfer_dagster.resources.database import DatabaseResource


class LedgerResource(ConfigurableResource):
    """What the sensor and the prediction runs need to move requests through the ledger."""

    database: DatabaseResource
    batch_size: int = Field(
        default=4096, ge=1, description="Requests per ledger batch (partition) at most."
    )
    batch_max_wait_seconds: float = Field(
        default=15.0,
        ge=0,
        description="A smaller batch closes when its oldest request has waited this long.",
    )
    max_pull: int = Field(default=5000, ge=1, description="Messages one sensor tick pulls at most.")
    pull_timeout_seconds: float = Field(
        default=4.0, gt=0, description="How long a tick waits for messages when none is ready."
    )
    max_attempts: int = Field(
        default=3, ge=1, description="Runs of one batch before its requests are dead-lettered."
    )
    feature_wait_seconds: float = Field(
        default=600.0,
        ge=0,
        description="How long a request waits for its record to reach the feature store.",
    )

    def get_engine(self) -> Engine:
        return self.database.get_engine()

    def batch_closing(self) -> BatchClosing:
        return BatchClosing(
            max_size=self.batch_size, max_wait=timedelta(seconds=self.batch_max_wait_seconds)
        )

    def feature_wait(self) -> timedelta:
        return timedelta(seconds=self.feature_wait_seconds)
