"""Retention prunes old settled batch partitions, finished ledger rows and the tombstones the
export has moved, and nothing else."""

from __future__ import annotations

from datetime import timedelta

import sqlalchemy as sa
from dagster import AssetMaterialization, DagsterInstance, asset, materialize

from batchinfer_dagster import db, ledger
from batchinfer_dagster.definitions import build_definitions
from batchinfer_dagster.defs.export_watermark import EXPORT_KEY, WATERMARK
from batchinfer_dagster.defs.partitions import PREDICTION_BATCHES
from batchinfer_dagster.prediction import configuration_of
from batchinfer_dagster.receipts import ModelIdentity, text_digest
from batchinfer_dagster.settings import Settings
from batchinfer_protocol.zero_shot import Prediction, PredictParameters
from batchinfer_testing.deployment import engine_of, resources_of, rows

CONFIGURATION = configuration_of(PredictParameters(), ModelIdentity("org/model", "sha256:one"))


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


def write_predictions(settings: Settings, record_ids: list[int]) -> None:
    with engine_of(settings).begin() as connection:
        ledger.write_predictions(
            connection,
            {i: Prediction(f"t{i}", ["a", "b"], [0.75, 0.25]) for i in record_ids},
            configuration=CONFIGURATION,
            text_digests={i: text_digest(f"t{i}") for i in record_ids},
            batch_key="b",
            run_id="r",
            now=db.utcnow(),
        )


def deleted_one_by_one(settings: Settings, record_ids: list[int]) -> list[int]:
    """Delete the records' predictions, a transaction each; the tombstones' numbers."""
    engine = engine_of(settings)
    for record_id in record_ids:
        with engine.begin() as connection:
            connection.execute(
                sa.delete(db.predictions).where(db.predictions.c.record_id == record_id)
            )
    return tombstone_numbers(settings)


def tombstone_numbers(settings: Settings) -> list[int]:
    return sorted(row.change_seq for row in rows(settings, db.prediction_deletions))


def run_retention(settings: Settings, instance: DagsterInstance) -> None:
    defs = build_definitions(resources_of(settings))
    result = defs.resolve_job_def("retention_job").execute_in_process(instance=instance)
    assert result.success


@asset(key=EXPORT_KEY)
def failing_export() -> None:
    """Stands for the BigQuery export asset (same key) whose run fails: what Dagster records of
    a tried export does not depend on the asset's body."""
    raise RuntimeError("BigQuery answered 500")


def test_tombstones_go_through_the_exports_watermark_and_no_further(
    instance: DagsterInstance, app_settings: Settings
) -> None:
    write_predictions(app_settings, [1, 2, 3])
    first, at, past = deleted_one_by_one(app_settings, [1, 2, 3])
    assert past == at + 1 > at > first
    instance.report_runless_asset_event(AssetMaterialization(EXPORT_KEY, metadata={WATERMARK: at}))

    run_retention(app_settings, instance)

    assert tombstone_numbers(app_settings) == [past]


def test_with_no_export_ever_tried_every_tombstone_goes(
    instance: DagsterInstance, app_settings: Settings
) -> None:
    write_predictions(app_settings, [1, 2])
    deleted_one_by_one(app_settings, [1, 2])

    run_retention(app_settings, instance)

    assert tombstone_numbers(app_settings) == []


def test_after_a_failed_first_export_no_tombstone_goes(
    instance: DagsterInstance, app_settings: Settings
) -> None:
    write_predictions(app_settings, [1, 2])
    kept = deleted_one_by_one(app_settings, [1, 2])
    assert not materialize([failing_export], instance=instance, raise_on_error=False).success

    run_retention(app_settings, instance)

    assert tombstone_numbers(app_settings) == kept
