"""A record deleted while its run settles gets no prediction (PostgreSQL, read committed;
SQLite, whose pysqlite transaction began only at the first write).

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
from batchinfer_testing.lock_waits import impatient_engine
from batchinfer_testing.transactions import Worker, finished_or_waiting_on_a_lock

on_postgresql = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
on_sqlite = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)

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


@on_postgresql
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


@on_postgresql
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


@on_sqlite
def test_on_sqlite_a_deletion_cannot_commit_between_the_settles_check_and_its_writes(
    app_settings: Settings, batch: tuple[Engine, int, int, ledger.Settlement]
) -> None:
    """pysqlite opens the settle's transaction at its first write, so its deletion check read
    outside it: a deletion committing right before that write left a prediction of the deleted
    text (or a request done without its prediction). Now the settle holds SQLite's write lock
    from its start (``db.hold_sqlite_write_lock``): the deletion, tried at the settle's first
    write, cannot commit (it fails at once here, on an impatient engine), and every request
    ends done with its prediction or dead-lettered."""
    engine, erased, kept, settlement = batch
    impatient = impatient_engine(app_settings.resolved_database_url)
    tried: list[Exception | int] = []

    def delete_before_the_first_write(
        connection: sa.Connection, cursor: Any, statement: str, *args: Any
    ) -> None:
        if not tried and statement.lstrip().upper().startswith(("INSERT", "UPDATE")):
            try:
                tried.append(delete_record(impatient, erased).predictions)
            except sa.exc.OperationalError as error:
                tried.append(error)

    sa.event.listen(engine, "before_cursor_execute", delete_before_the_first_write)
    try:
        ledger.settle_batch(engine, settlement)
    finally:
        sa.event.remove(engine, "before_cursor_execute", delete_before_the_first_write)
        impatient.dispose()

    assert len(tried) == 1
    predicted = {row.record_id for row in rows(app_settings, db.predictions)}
    deleted = {row.record_id for row in rows(app_settings, db.record_deletions)}
    assert not predicted & deleted, "a prediction of a deleted record"
    lettered = {row.record_id for row in rows(app_settings, db.dead_letters)}
    for request in rows(app_settings, db.prediction_requests):
        if request.status == ledger.RequestStatus.DONE:
            assert request.record_id in predicted, "a request done without its prediction"
        else:
            assert request.status == ledger.RequestStatus.DEAD_LETTERED
            assert request.record_id in lettered
    assert isinstance(tried[0], sa.exc.OperationalError)  # the deletion had to wait
    assert predicted == {erased, kept}
