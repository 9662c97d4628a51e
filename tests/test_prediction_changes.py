"""The prediction export's window on SQLite and PostgreSQL: migration 0007's change numbers.

Every prediction write (insert, upsert, a row no longer current, a delete) is numbered by the
database in commit order; an export window ``(since, through]`` stops at the committed horizon,
so a settle that commits late, whatever its clock said, lands in a later window.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy import Engine

from batchinfer_dagster import db, ledger, prediction_changes
from batchinfer_dagster.prediction import configuration_of
from batchinfer_dagster.prediction_changes import (
    ExportWindow,
    ExportWindowError,
    MalformedPredictionError,
)
from batchinfer_dagster.receipts import Configuration, ModelIdentity, text_digest
from batchinfer_dagster.settings import Settings
from batchinfer_protocol.zero_shot import Prediction, PredictParameters

T0 = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
# The migration that numbers predictions, and the one before it.
BEFORE, NUMBERING = "0006", "0007"
MODEL = ModelIdentity("org/model", "sha256:one")
CURRENT = configuration_of(PredictParameters(), MODEL)
NEW = configuration_of(PredictParameters(hypothesis_template="About {}."), MODEL)


@pytest.fixture
def engine(app_settings: Settings) -> Engine:
    return db.engine_for(app_settings.resolved_database_url)


def write(
    connection: sa.Connection,
    record_ids: list[int],
    *,
    configuration: Configuration = CURRENT,
    now: datetime = T0,
) -> None:
    ledger.write_predictions(
        connection,
        {i: Prediction(f"t{i}", ["billing", "other"], [0.75, 0.25]) for i in record_ids},
        configuration=configuration,
        text_digests={i: text_digest(f"t{i}") for i in record_ids},
        batch_key="b",
        run_id="r",
        now=now,
    )


def write_now(engine: Engine, record_ids: list[int], **kwargs: object) -> None:
    with engine.begin() as connection:
        write(connection, record_ids, **kwargs)  # type: ignore[arg-type]


def numbers(engine: Engine) -> dict[tuple[int, str], int]:
    table = db.predictions
    with engine.connect() as connection:
        rows = connection.execute(
            sa.select(table.c.record_id, table.c.configuration, table.c.change_seq)
        )
        return {(row.record_id, row.configuration): row.change_seq for row in rows}


def changed(engine: Engine, window: ExportWindow, chunk: int = 10_000) -> list[tuple[int, str]]:
    return [
        (receipt.record_id, receipt.configuration)
        for page in prediction_changes.iter_changed(engine, window, chunk=chunk)
        for receipt in page
    ]


def test_every_write_of_a_row_is_numbered_past_the_last(engine: Engine) -> None:
    write_now(engine, [1, 2])
    first = numbers(engine)
    write_now(engine, [1], configuration=NEW)  # record 1's CURRENT row stops being current
    second = numbers(engine)
    write_now(engine, [2])  # the same configuration again: an upsert of the same row

    third = numbers(engine)
    assert min(first.values()) > 0
    assert second[(1, CURRENT.digest)] > first[(1, CURRENT.digest)]
    assert second[(1, NEW.digest)] > first[(1, CURRENT.digest)]
    assert second[(2, CURRENT.digest)] == first[(2, CURRENT.digest)]  # untouched, unnumbered
    assert third[(2, CURRENT.digest)] > max(second.values())
    with engine.connect() as connection:
        assert prediction_changes.committed_horizon(connection) == max(third.values())


def test_window_bounds_since_excluded_through_included(engine: Engine) -> None:
    write_now(engine, [1])
    write_now(engine, [2])
    write_now(engine, [3])
    seq = numbers(engine)
    one, two, three = (seq[(i, CURRENT.digest)] for i in (1, 2, 3))

    assert changed(engine, ExportWindow(since=one, through=two)) == [(2, CURRENT.digest)]
    assert changed(engine, ExportWindow(since=0, through=three)) == [
        (i, CURRENT.digest) for i in (1, 2, 3)
    ]
    assert changed(engine, ExportWindow(since=three, through=three)) == []


def test_a_transaction_held_open_across_a_window_arrives_in_the_next(engine: Engine) -> None:
    """A settle stamped T0 whose transaction stays open while a window is read, and a second
    settle stamped an hour later behind it: neither is in that window (nothing past the
    committed horizon), both are in the next."""
    write_now(engine, [1], now=T0 + timedelta(hours=2))
    before = prediction_changes.open_window(engine, None)
    held = engine.connect()
    transaction = held.begin()
    write(held, [2], now=T0)
    # The second writer waits for the counter row (PostgreSQL) or the write lock (SQLite) until
    # the held transaction commits, so its number comes after.
    behind = threading.Thread(
        target=write_now, args=(engine, [3]), kwargs={"now": T0 + timedelta(hours=1)}
    )
    behind.start()
    try:
        window = prediction_changes.open_window(engine, before.through)
        during = changed(engine, window)
    finally:
        transaction.commit()
        held.close()
        behind.join(timeout=60)
    assert not behind.is_alive()

    assert during == []
    after = changed(engine, prediction_changes.open_window(engine, window.through))
    assert sorted(after) == [(2, CURRENT.digest), (3, CURRENT.digest)]


@pytest.mark.parametrize(("rows", "chunk"), [(5, 2), (4, 2), (5, 5), (5, 6)])
def test_pages_cross_chunk_borders_among_rows_of_one_number(
    engine: Engine, rows: int, chunk: int
) -> None:
    """One transaction: on PostgreSQL every row shares its number, so pages end inside it."""
    write_now(engine, list(range(1, rows + 1)))
    window = prediction_changes.open_window(engine, None)

    pages = list(prediction_changes.iter_changed(engine, window, chunk=chunk))

    assert [len(page) for page in pages] == [chunk] * (rows // chunk) + (
        [rows % chunk] if rows % chunk else []
    )
    assert changed(engine, window, chunk=chunk) == [(i, CURRENT.digest) for i in range(1, 6)][:rows]


def test_a_deleted_row_leaves_a_tombstone_numbered_after_it(engine: Engine) -> None:
    write_now(engine, [1, 2])
    written = prediction_changes.open_window(engine, None)
    with engine.begin() as connection:
        connection.execute(sa.delete(db.predictions).where(db.predictions.c.record_id == 1))

    window = prediction_changes.open_window(engine, written.through)
    [[tombstone]] = list(prediction_changes.iter_deleted(engine, window))

    assert (tombstone.record_id, tombstone.configuration) == (1, CURRENT.digest)
    assert tombstone.change_seq == window.through > written.through
    assert changed(engine, window) == []


def delete_one_by_one(engine: Engine, record_ids: list[int]) -> list[int]:
    """Delete the records' predictions, a transaction each; their tombstones' numbers."""
    for record_id in record_ids:
        with engine.begin() as connection:
            connection.execute(
                sa.delete(db.predictions).where(db.predictions.c.record_id == record_id)
            )
    return [tombstone.change_seq for tombstone in tombstones(engine)]


def tombstones(engine: Engine) -> list[prediction_changes.PredictionTombstone]:
    window = prediction_changes.open_window(engine, None)
    return [row for page in prediction_changes.iter_deleted(engine, window) for row in page]


def test_tombstones_are_pruned_through_the_number_given_and_no_further(engine: Engine) -> None:
    write_now(engine, [1, 2, 3])
    first, at, past = delete_one_by_one(engine, [1, 2, 3])
    assert past == at + 1
    assert first < at

    assert prediction_changes.prune_tombstones(engine, at) == 2

    assert [(t.record_id, t.change_seq) for t in tombstones(engine)] == [(3, past)]
    assert prediction_changes.prune_tombstones(engine, at) == 0


def test_a_watermark_past_the_horizon_is_refused(engine: Engine) -> None:
    write_now(engine, [1])
    through = prediction_changes.open_window(engine, None).through

    assert prediction_changes.open_window(engine, through).empty
    with pytest.raises(ExportWindowError, match=f"reached prediction change {through + 1}"):
        prediction_changes.open_window(engine, through + 1)


def test_labels_and_scores_that_do_not_pair_are_refused_by_name(engine: Engine) -> None:
    write_now(engine, [7])
    with engine.begin() as connection:
        connection.execute(sa.update(db.predictions).values(labels=["billing"]))

    with pytest.raises(MalformedPredictionError, match="record 7 under configuration"):
        changed(engine, prediction_changes.open_window(engine, None))


def migrate_to(engine: Engine, revision: str, *, down: bool = False) -> None:
    from alembic import command

    config = db._alembic_config()  # noqa: SLF001 - the test migrates to a chosen revision
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        (command.downgrade if down else command.upgrade)(config, revision)


def test_the_numbering_migration_numbers_existing_predictions_once_and_downgrades(
    database_url: str,
) -> None:
    """Predictions stored before the migration all get number 1, so the first export sends them all;
    new writes are numbered after; the downgrade keeps the predictions."""
    engine = db.create_app_engine(database_url)
    try:
        migrate_to(engine, BEFORE)
        write_now(engine, [1, 2])
        migrate_to(engine, NUMBERING)

        assert set(numbers(engine).values()) == {1}
        window = prediction_changes.open_window(engine, None)
        assert (window.since, window.through) == (0, 1)
        assert changed(engine, window) == [(1, CURRENT.digest), (2, CURRENT.digest)]
        write_now(engine, [3])
        assert numbers(engine)[(3, CURRENT.digest)] == 2

        migrate_to(engine, BEFORE, down=True)
        with engine.connect() as connection:
            columns = {c["name"] for c in sa.inspect(connection).get_columns("predictions")}
            kept = connection.execute(sa.text("SELECT count(*) FROM predictions")).scalar_one()
        assert "change_seq" not in columns
        assert kept == 3
        migrate_to(engine, NUMBERING)
        assert set(numbers(engine).values()) == {1}
    finally:
        engine.dispose()
