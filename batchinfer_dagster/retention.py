"""Retention: prune old batch partitions so the Dagster UI stays fast (design §2).

Only the Dagster partitions go: the ledger rows and the predictions stay, so per-record lineage
(batch key, run id) survives. Batches still queued, running or failed are never pruned.
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

from batchinfer_dagster import db, ledger
from batchinfer_dagster.assets import BatchinferResource
from batchinfer_dagster.partitions import PREDICTION_BATCHES, new_batch_key


class RetentionConfig(Config):
    """Launchpad config of ``retention_job``."""

    older_than_days: float = Field(default=30.0, ge=0, description="Prune batches this old.")
    max_partitions: int = Field(default=10_000, ge=1, description="Bound on one run's work.")


@op
def prune_batch_partitions(
    context: OpExecutionContext, config: RetentionConfig, batchinfer: BatchinferResource
) -> None:
    """Delete settled batch partitions older than the cutoff; keys sort by creation time."""
    cutoff = new_batch_key(db.utcnow() - timedelta(days=config.older_than_days))
    old = [
        key for key in context.instance.get_dynamic_partitions(PREDICTION_BATCHES) if key < cutoff
    ]
    prunable = ledger.settled_batches(batchinfer.get_engine(), sorted(old))[: config.max_partitions]
    for key in prunable:
        context.instance.delete_dynamic_partition(PREDICTION_BATCHES, key)
    context.log.info(
        "pruned %d of %d batch partitions older than %s", len(prunable), len(old), cutoff[:16]
    )


@job(description="Prune old, settled prediction batch partitions; predictions are kept.")
def retention_job() -> None:
    prune_batch_partitions()


retention_schedule = ScheduleDefinition(
    name="retention_schedule",
    job=retention_job,
    cron_schedule="0 3 * * *",
    default_status=DefaultScheduleStatus.STOPPED,
    description="Daily at 03:00 UTC once turned on; run retention_job by hand meanwhile.",
)
