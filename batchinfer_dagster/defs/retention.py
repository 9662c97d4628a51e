"""Retention: prune old batch partitions and finished ledger rows (docs/architecture.md).

Partitions go so the Dagster UI stays fast; finished ledger rows go so the request tables stay
small; the tombstones of deleted predictions go once the BigQuery export has moved them
(``export_watermark.tombstones_prunable_through``). Predictions are never touched: each keeps
its batch key and run id, the per-record lineage that outlives both. Batches still queued,
running or failed are never pruned. Keep the cutoff longer than the queue's message retention
(Pub/Sub: at most 31 days), so a very late redelivery still finds its request row and is not
predicted again.
"""

from datetime import timedelta

from dagster import (
    Config,
    DefaultScheduleStatus,
    OpExecutionContext,
    ScheduleDefinition,
    job,
    op,
)
from pydantic import Field

from batchinfer_dagster import db
from batchinfer_dagster.defs.export_watermark import tombstones_prunable_through
from batchinfer_dagster.defs.jobs import launchpad_description
from batchinfer_dagster.defs.partitions import PREDICTION_BATCHES
from batchinfer_dagster.defs.resources.ledger import LedgerResource
from batchinfer_dagster.ledger import old_settled_batches, prune_settled, settled_batches
from batchinfer_dagster.ledger.batch_keys import new_batch_key
from batchinfer_dagster.prediction_changes import committed_horizon, prune_tombstones


class RetentionConfig(Config):
    """Launchpad config of ``retention_job``."""

    older_than_days: float = Field(default=30.0, ge=0, description="Prune batches this old.")
    max_partitions: int = Field(default=10_000, ge=1, description="Bound on one run's work.")
    prune_ledger: bool = Field(
        default=True, description="Also delete the finished request and batch rows."
    )


@op
def prune_batch_partitions(
    context: OpExecutionContext, config: RetentionConfig, ledger: LedgerResource
) -> None:
    """Delete settled batch partitions older than the cutoff; keys sort by creation time."""
    before = db.utcnow() - timedelta(days=config.older_than_days)
    cutoff = new_batch_key(before)
    old = [
        key for key in context.instance.get_dynamic_partitions(PREDICTION_BATCHES) if key < cutoff
    ]
    engine = ledger.get_engine()
    prunable = settled_batches(engine, sorted(old))[: config.max_partitions]
    for key in prunable:
        context.instance.delete_dynamic_partition(PREDICTION_BATCHES, key)
    context.log.info(
        "pruned %d of %d batch partitions older than %s", len(prunable), len(old), cutoff[:16]
    )
    if config.prune_ledger:
        batches = old_settled_batches(engine, before=before, limit=config.max_partitions)
        requests, deleted = prune_settled(engine, batches)
        context.log.info("deleted %d finished requests and %d settled batches", requests, deleted)


@op
def prune_prediction_tombstones(context: OpExecutionContext, ledger: LedgerResource) -> None:
    """Delete the deleted predictions' tombstones that no export will read again."""
    engine = ledger.get_engine()
    with engine.connect() as connection:
        horizon = committed_horizon(connection)
    through = tombstones_prunable_through(context.instance, horizon)
    pruned = prune_tombstones(engine, through)
    context.log.info(
        "deleted %d prediction tombstones numbered up to %d (horizon %d)", pruned, through, horizon
    )


@job(
    description=launchpad_description(
        "Prune old settled batch partitions and ledger rows, and the tombstones of deleted "
        "predictions the export has moved; predictions are kept.",
        "prune_batch_partitions",
        RetentionConfig(),
    )
)
def retention_job() -> None:
    prune_batch_partitions()
    prune_prediction_tombstones()


retention_schedule = ScheduleDefinition(
    name="retention_schedule",
    job=retention_job,
    cron_schedule="0 3 * * *",
    default_status=DefaultScheduleStatus.STOPPED,
    description="Daily at 03:00 UTC once turned on; run retention_job by hand meanwhile.",
)
