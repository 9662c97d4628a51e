"""The code location: one ``Definitions`` with assets, checks, sensor, jobs, schedule, resource."""

from __future__ import annotations

from dagster import Definitions

from batchinfer_dagster.assets import BatchinferResource, data_points, feature_store, predictions
from batchinfer_dagster.jobs import predict_records_job, predictions_job
from batchinfer_dagster.retention import retention_job, retention_schedule
from batchinfer_dagster.sensors import prediction_requests_sensor


def build_definitions(batchinfer: BatchinferResource) -> Definitions:
    """The code location around ``batchinfer``; tests and benchmarks pass explicit settings."""
    return Definitions(
        assets=[data_points, feature_store, predictions],
        jobs=[predictions_job, predict_records_job, retention_job],
        schedules=[retention_schedule],
        sensors=[prediction_requests_sensor],
        resources={"batchinfer": batchinfer},
    )


# Production and `dagster dev`: settings come from the BATCHINFER_* environment.
defs = build_definitions(BatchinferResource())
