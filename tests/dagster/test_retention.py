"""Retention prunes old settled batch partitions and nothing else."""

from __future__ import annotations

from datetime import timedelta

import sqlalchemy as sa
from dagster import DagsterInstance

from batchinfer_dagster import db, ledger
from batchinfer_dagster.definitions import build_definitions
from batchinfer_dagster.defs.partitions import PREDICTION_BATCHES
from batchinfer_dagster.settings import Settings
from batchinfer_testing.deployment import engine_of, resources_of, rows


def test_retention_prunes_only_old_settled_partitions(
    instance: DagsterInstance, app_settings: Settings
) -> None:
    engine = engine_of(app_settings)
    now = db.utcnow()
    old = ledger.create_batches(
        engine, [1, 2, 3, 5], source="test", batch_size=1, now=now - timedelta(days=40)
    )
    (recent,) = ledger.create_batches(engine, [4], source="test", batch_size=1, now=now)
    old_done, old_dead, old_queued, old_waiting = old
    table, requests = db.prediction_batches, db.prediction_requests
    settle = {
        old_done: (ledger.BatchStatus.SUCCEEDED, ledger.RequestStatus.DONE),
        recent: (ledger.BatchStatus.SUCCEEDED, ledger.RequestStatus.DONE),
        old_dead: (ledger.RequestStatus.DEAD_LETTERED, ledger.RequestStatus.DEAD_LETTERED),
        # A succeeded batch one of whose requests still waits for features keeps that request.
        old_waiting: (ledger.BatchStatus.SUCCEEDED, ledger.RequestStatus.WAITING_FEATURES),
    }
    with engine.begin() as connection:
        for key, (batch_status, request_status) in settle.items():
            connection.execute(
                sa.update(table).where(table.c.batch_key == key).values(status=batch_status)
            )
            connection.execute(
                sa.update(requests).where(requests.c.batch_key == key).values(status=request_status)
            )
        connection.execute(
            db.predictions.insert().values(
                record_id=1,
                model="m",
                configuration="c",
                is_current=True,
                sequence="s",
                labels=["a"],
                scores=[1.0],
                batch_key=old_done,
                run_id="r",
                created_at=now,
                updated_at=now,
            )
        )
    instance.add_dynamic_partitions(PREDICTION_BATCHES, [*old, recent])

    defs = build_definitions(resources_of(app_settings))
    result = defs.resolve_job_def("retention_job").execute_in_process(
        run_config={"ops": {"prune_batch_partitions": {"config": {"older_than_days": 30}}}},
        instance=instance,
    )

    assert result.success
    assert sorted(instance.get_dynamic_partitions(PREDICTION_BATCHES)) == sorted(
        [old_queued, recent]
    )
    # Finished ledger rows of the old settled batches are gone; everything else stays.
    kept = sorted([old_queued, old_waiting, recent])
    assert sorted(r.batch_key for r in rows(app_settings, table)) == kept
    assert sorted(r.batch_key for r in rows(app_settings, requests)) == kept
    [prediction] = rows(app_settings, db.predictions)
    assert prediction.batch_key == old_done  # predictions and their lineage are never pruned
