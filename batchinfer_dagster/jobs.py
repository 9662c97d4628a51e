"""Jobs: the partitioned job the sensor launches, and a manual job for chosen record ids."""

from dagster import (
    AssetMaterialization,
    AssetSelection,
    Config,
    OpExecutionContext,
    define_asset_job,
    job,
    op,
)
from pydantic import Field

from batchinfer_dagster import db, ledger
from batchinfer_dagster.assets import (
    BatchinferResource,
    outcome_metadata,
    predict_with_settings,
    predictions,
)
from batchinfer_dagster.partitions import PREDICTION_BATCHES

predictions_job = define_asset_job(
    "predictions_job",
    selection=AssetSelection.assets(predictions),
    description="Predict one request batch (a partition of `predictions`).",
)


class PredictRecordsConfig(Config):
    """Launchpad config of ``predict_records_job``."""

    record_ids: list[int] = Field(description="Record ids to predict, e.g. [1, 2, 3].")


@op(pool="model_server")
def predict_records(
    context: OpExecutionContext, config: PredictRecordsConfig, batchinfer: BatchinferResource
) -> None:
    """Write requests for the chosen ids into the ledger as new batches and predict them now.

    The batches are ordinary ``predictions`` partitions afterwards, so their lineage, checks and
    re-materialization work as for batches that came through the queue. No retry policy: a retry
    would write the requests again; a failed batch is retried by the sensor's reconcile instead.
    """
    if not config.record_ids:
        raise ValueError("record_ids is empty: give at least one record id, e.g. [1, 2, 3]")
    settings = batchinfer.get_settings()
    engine = db.get_engine(settings)
    batch_keys = ledger.create_batches(
        engine,
        config.record_ids,
        source="manual",
        batch_size=settings.batch_size,
        now=db.utcnow(),
    )
    context.instance.add_dynamic_partitions(PREDICTION_BATCHES, batch_keys)
    for batch_key in batch_keys:
        outcome = predict_with_settings(settings, batch_key, context.run_id)
        context.log_event(
            AssetMaterialization(
                asset_key="predictions",
                partition=batch_key,
                metadata=outcome_metadata(outcome),
                description=f"predicted by predict_records_job run {context.run_id}",
            )
        )


@job(description="Predict chosen record ids from the launchpad (config: record_ids).")
def predict_records_job() -> None:
    predict_records()
