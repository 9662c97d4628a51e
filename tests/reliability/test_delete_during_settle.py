"""A record deleted while its run settles gets no prediction (PostgreSQL, read committed).

Before the fix, the settling transaction read the tombstones, and a deletion that committed
before the settle's commit had already deleted the record's predictions (none visible yet), so
the prediction the settle wrote next survived, holding the erased text. Both orders are
interleaved here with two real transactions, held at a chosen statement; the test waits for the
other transaction to be either finished or waiting on a lock (a state, not a time).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import Engine

from batchinfer_dagster import db, ledger
from batchinfer_dagster.prediction import configuration_of
from batchinfer_dagster.receipts import ModelIdentity, text_digest
from batchinfer_dagster.records import add_records, delete_record
from batchinfer_dagster.settings import Settings
from batchinfer_protocol.zero_shot import Prediction, PredictParameters
from batchinfer_testing.deployment import engine_of, rows
from batchinfer_testing.transactions import Worker, finished_or_waiting_on_a_lock

pytestmark = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)

ANSWER = Prediction(sequence="erase me", labels=["billing"], scores=[1.0])


@pytest.fixture
def batch(app_settings: Settings) -> tuple[Engine, int, int, ledger.Settlement]:
    """Two records in one started batch, and the settlement its run would write."""
    engine = engine_of(app_settings)
    erased, kept = add_records(engine, ["erase me", "keep me"])
    [batch_key] = ledger.create_batches(
        engine, [erased, kept], source="test", batch_size=8, now=db.utcnow()
    )
    requests = ledger.start_batch(engine, batch_key, run_id="run-1", now=db.utcnow())
    settlement = ledger.Settlement(
        batch_key=batch_key,
        run_id="run-1",
        requests=requests,
        configuration=configuration_of(
            PredictParameters(), ModelIdentity("test-model", "sha256:test")
        ),
        answers={erased: ANSWER, kept: ANSWER},
        text_digests={erased: text_digest("erase me"), kept: text_digest("keep me")},
        feature_wait=timedelta(seconds=600),
        now=db.utcnow(),
    )
    return engine, erased, kept, settlement


def assert_erased_is_a_dead_letter(settings: Settings, erased: int, kept: int) -> None:
    assert [row.record_id for row in rows(settings, db.predictions)] == [kept]
    [letter] = rows(settings, db.dead_letters)
    assert (letter.record_id, letter.reason) == (erased, ledger.UNKNOWN_RECORD)


def test_a_deletion_committing_inside_the_settle_waits_and_removes_its_prediction(
    app_settings: Settings, batch: tuple[Engine, int, int, ledger.Settlement]
) -> None:
    """The settle checks the tombstones; the deletion then runs and commits before the settle
    writes its predictions. Now the deletion waits for the settle's lock, and deletes the
    prediction once the settle has committed."""
    engine, erased, kept, settlement = batch
    deletion: list[Worker] = []

    def delete_before_predictions_are_written(
        connection: sa.Connection, cursor: Any, statement: str, *args: Any
    ) -> None:
        if statement.lstrip().upper().startswith("INSERT INTO PREDICTIONS") and not deletion:
            deletion.append(Worker(lambda: delete_record(engine, erased)))
            deletion[0].start()
            finished_or_waiting_on_a_lock(engine, deletion[0])

    sa.event.listen(engine, "before_cursor_execute", delete_before_predictions_are_written)
    try:
        waiting, dead = ledger.settle_batch(engine, settlement)
    finally:
        sa.event.remove(engine, "before_cursor_execute", delete_before_predictions_are_written)

    assert deletion, "the settle wrote no predictions"
    assert deletion[0].outcome().predictions == 1
    # The settle committed before the deletion: it predicted both, and the deletion then
    # removed the erased record's prediction.
    assert (waiting, dead) == (0, 0)
    assert [row.record_id for row in rows(app_settings, db.predictions)] == [kept]


def test_a_settle_behind_an_uncommitted_deletion_waits_and_dead_letters_the_record(
    app_settings: Settings, batch: tuple[Engine, int, int, ledger.Settlement]
) -> None:
    """The deletion has deleted the record and its predictions but not committed when the
    settle starts. Now the settle waits for it, sees the tombstone, and dead-letters the
    record's request instead of predicting it."""
    engine, erased, kept, settlement = batch
    with engine.connect() as deleting:
        transaction = deleting.begin()
        deleting.execute(sa.delete(db.data_points).where(db.data_points.c.id == erased))
        deleting.execute(sa.delete(db.predictions).where(db.predictions.c.record_id == erased))
        settle = Worker(lambda: ledger.settle_batch(engine, settlement))
        settle.start()
        finished_or_waiting_on_a_lock(engine, settle)
        transaction.commit()

    assert settle.outcome() == (0, 1)
    assert_erased_is_a_dead_letter(app_settings, erased, kept)
