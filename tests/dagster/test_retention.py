"""Retention prunes old settled batch partitions and nothing else."""

from __future__ import annotations

from datetime import timedelta

import sqlalchemy as sa
from dagster import DagsterInstance

from batchinfer_dagster import db, ledger
from batchinfer_dagster.assets import BatchinferResource
from batchinfer_dagster.definitions import build_definitions
from batchinfer_dagster.partitions import PREDICTION_BATCHES
from batchinfer_dagster.settings import Settings
from tests.dagster.harness import rows


def test_retention_prunes_only_old_settled_partitions(
    instance: DagsterInstance, app_settings: Settings
) -> None:
    engine = db.get_engine(app_settings)
    now = db.utcnow()
    old = ledger.create_batches(
        engine, [1, 2, 3], source="test", batch_size=1, now=now - timedelta(days=40)
    )
    (recent,) = ledger.create_batches(engine, [4], source="test", batch_size=1, now=now)
    old_done, old_dead, old_queued = old
    table = db.prediction_batches
    with engine.begin() as connection:
        connection.execute(
            sa.update(table)
            .where(table.c.batch_key.in_([old_done, recent]))
            .values(status=ledger.SUCCEEDED)
        )
        connection.execute(
            sa.update(table)
            .where(table.c.batch_key == old_dead)
            .values(status=ledger.DEAD_LETTERED)
        )
    instance.add_dynamic_partitions(PREDICTION_BATCHES, [*old, recent])

    defs = build_definitions(BatchinferResource.for_settings(app_settings))
    result = defs.resolve_job_def("retention_job").execute_in_process(
        run_config={"ops": {"prune_batch_partitions": {"config": {"older_than_days": 30}}}},
        instance=instance,
    )

    assert result.success
    assert sorted(instance.get_dynamic_partitions(PREDICTION_BATCHES)) == sorted(
        [old_queued, recent]
    )
    assert len(rows(app_settings, table)) == 4  # the ledger keeps every batch
