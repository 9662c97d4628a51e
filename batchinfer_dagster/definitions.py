"""The code location: assets, checks, sensor, jobs, schedule, and the deployment's resources.

Which implementation serves each system (local or Google) comes from the ``BATCHINFER_*``
settings, chosen once in ``batchinfer_dagster.defs.deployments``; tests pass their own resources.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dagster import Definitions

from batchinfer_dagster.defs.assets import data_points, features, predictions
from batchinfer_dagster.defs.deployments import resources_for
from batchinfer_dagster.defs.jobs import (
    check_stale_predictions_job,
    predictions_job,
    request_predictions_job,
    request_stale_predictions_job,
)
from batchinfer_dagster.defs.retention import retention_job, retention_schedule
from batchinfer_dagster.defs.rollout_defs import (
    discard_rollout_job,
    promote_rollout_job,
    rollout_report,
    rollout_report_job,
    rollout_reports_sensor,
    start_rollout_job,
)
from batchinfer_dagster.defs.sensors import prediction_requests_sensor
from batchinfer_dagster.defs.stale_check import predictions_are_current
from batchinfer_dagster.settings import load_settings


def build_definitions(resources: Mapping[str, Any]) -> Definitions:
    """The code location around ``resources`` (keys: database, ledger, request_queue,
    feature_store, model_server; and prediction_export on Google Cloud, which adds the BigQuery
    export asset and its sensor)."""
    exports: list[Any] = []
    export_sensors: list[Any] = []
    if "prediction_export" in resources:
        # Imported here: dagster-gcp is for Google Cloud deployments only.
        from batchinfer_dagster.defs.prediction_export import (
            bigquery_predictions,
            bigquery_predictions_sensor,
        )

        exports, export_sensors = [bigquery_predictions], [bigquery_predictions_sensor]
    return Definitions(
        assets=[data_points, features, predictions, rollout_report, *exports],
        asset_checks=[predictions_are_current],
        jobs=[
            predictions_job,
            request_predictions_job,
            retention_job,
            request_stale_predictions_job,
            check_stale_predictions_job,
            rollout_report_job,
            start_rollout_job,
            promote_rollout_job,
            discard_rollout_job,
        ],
        schedules=[retention_schedule],
        sensors=[prediction_requests_sensor, rollout_reports_sensor, *export_sensors],
        resources=dict(resources),
    )


defs = build_definitions(resources_for(load_settings(), secrets_from_env=True).as_dict())
