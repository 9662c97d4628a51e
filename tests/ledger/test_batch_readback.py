"""What a batch's asset checks read back: its done records, and their predictions of one model,
current or of one configuration; rows of other batches, models and configurations beside them."""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa

from batchinfer_dagster import db, ledger
from batchinfer_dagster.ledger.readback import batch_record_ids, read_predictions
from batchinfer_dagster.settings import Settings
from batchinfer_protocol.zero_shot import Prediction
from batchinfer_testing.deployment import engine_of

NOW = datetime(2026, 12, 5, 9, 0, tzinfo=UTC)


def test_a_batch_reads_back_its_done_records_once_each_in_id_order(
    app_settings: Settings,
) -> None:
    engine = engine_of(app_settings)
    (key,) = ledger.create_batches(engine, [9, 4, 7, 4, 2], source="t", batch_size=8, now=NOW)
    (other,) = ledger.create_batches(engine, [1], source="t", batch_size=8, now=NOW)
    table = db.prediction_requests
    with engine.begin() as connection:
        connection.execute(table.update().values(status=ledger.RequestStatus.DONE))
        connection.execute(
            table.update()
            .where(table.c.record_id == 2)
            .values(status=ledger.RequestStatus.DEAD_LETTERED)
        )

    assert batch_record_ids(engine, key) == [4, 7, 9]
    assert batch_record_ids(engine, other) == [1]


def put(engine: sa.Engine, record_id: int, configuration: str, model: str, current: bool) -> None:
    with engine.begin() as connection:
        connection.execute(
            db.predictions.insert().values(
                record_id=record_id,
                configuration=configuration,
                model=model,
                sequence=f"{record_id} under {configuration}",
                labels=["a", "b"],
                scores=[0.6, 0.4],
                created_at=NOW,
                updated_at=NOW,
                is_current=current,
            )
        )


def test_predictions_read_back_current_rows_or_one_configurations_rows(
    app_settings: Settings,
) -> None:
    engine = engine_of(app_settings)
    put(engine, 1, "old", "m", current=False)
    put(engine, 1, "new", "m", current=True)
    put(engine, 2, "old", "m", current=True)
    put(engine, 3, "new", "other-model", current=True)
    put(engine, 4, "new", "m", current=True)

    found = read_predictions(engine, [3, 2, 1, 2], model_name="m")
    assert found == {
        1: Prediction("1 under new", ["a", "b"], [0.6, 0.4]),
        2: Prediction("2 under old", ["a", "b"], [0.6, 0.4]),
    }
    candidate = read_predictions(engine, [1, 2, 3], model_name="m", configuration="old")
    assert {r: p.sequence for r, p in candidate.items()} == {1: "1 under old", 2: "2 under old"}
