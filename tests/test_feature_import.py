"""The incremental feature import on the local store, SQLite and PostgreSQL: the watermark rule.

Times are injected: records get ``updated_at`` values chosen around the watermark, and the
import's clock is a fixed time, so each boundary is hit exactly.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy import Engine

from batchinfer_dagster import db, feature_import
from batchinfer_dagster.clients.feature_store import LocalFeatureStore
from batchinfer_dagster.settings import Settings

T0 = datetime(2026, 11, 30, 12, 0, 0, tzinfo=UTC)
MICROSECOND = timedelta(microseconds=1)


@pytest.fixture
def engine(app_settings: Settings) -> Engine:
    return db.engine_for(app_settings.resolved_database_url)


def add_at(engine: Engine, when: datetime, *texts: str) -> list[int]:
    table = db.data_points
    with engine.begin() as connection:
        result = connection.execute(
            table.insert().returning(table.c.id, sort_by_parameter_order=True),
            [{"text": text, "created_at": when, "updated_at": when} for text in texts],
        )
        return list(result.scalars())


def change_at(engine: Engine, record_id: int, text: str, when: datetime) -> None:
    table = db.data_points
    with engine.begin() as connection:
        connection.execute(
            sa.update(table).where(table.c.id == record_id).values(text=text, updated_at=when)
        )


def stored(engine: Engine) -> dict[int, str]:
    with engine.connect() as connection:
        rows = connection.execute(sa.select(db.features.c.record_id, db.features.c.text))
        return {row.record_id: row.text for row in rows}


def store_at(engine: Engine, now: datetime) -> LocalFeatureStore:
    return LocalFeatureStore(engine, clock=lambda: now)


def test_first_import_moves_everything_and_sets_the_watermark(engine: Engine) -> None:
    add_at(engine, T0, "a", "b")
    now = T0 + timedelta(minutes=1)

    result = store_at(engine, now).import_records()

    assert result.rows_imported == 2
    assert result.details["since"] is None
    assert stored(engine) == {1: "a", 2: "b"}
    watermark = feature_import.stored_watermark(engine, LocalFeatureStore.TARGET)
    assert watermark == now - feature_import.SETTLE


def test_watermark_boundary_at_just_before_and_just_after(engine: Engine) -> None:
    """Watermark W: a change exactly at W and one just after move; one just before does not."""
    ids = add_at(engine, T0, "before", "at", "after", "untouched")
    now = T0 + timedelta(minutes=1)
    store_at(engine, now).import_records()
    watermark = feature_import.stored_watermark(engine, LocalFeatureStore.TARGET)
    assert watermark is not None
    # A change stamped just before the watermark was, by the settle rule, already committed
    # when the import read: it cannot be newer than what was moved. Rewrite it to show that
    # the next import does not look before the watermark.
    change_at(engine, ids[0], "before, changed", watermark - MICROSECOND)
    change_at(engine, ids[1], "at, changed", watermark)
    change_at(engine, ids[2], "after, changed", watermark + MICROSECOND)

    result = store_at(engine, now + timedelta(minutes=1)).import_records()

    assert result.rows_imported == 2
    assert stored(engine) == {
        ids[0]: "before",
        ids[1]: "at, changed",
        ids[2]: "after, changed",
        ids[3]: "untouched",
    }


def test_second_import_with_nothing_new_moves_nothing(engine: Engine) -> None:
    add_at(engine, T0, *[f"text {i}" for i in range(25)])
    store_at(engine, T0 + timedelta(minutes=1)).import_records()

    again = store_at(engine, T0 + timedelta(minutes=2)).import_records()

    assert again.rows_imported == 0
    assert again.total_records == 25


def test_a_change_within_settle_of_an_import_moves_again(engine: Engine) -> None:
    """A record stamped less than SETTLE before the import moves in the next import too:
    a writer that stamped it but committed after the import's read is never skipped."""
    now = T0 + timedelta(minutes=1)
    recent = now - feature_import.SETTLE + MICROSECOND
    add_at(engine, recent, "late committer")
    assert store_at(engine, now).import_records().rows_imported == 1

    again = store_at(engine, now + timedelta(seconds=1)).import_records()

    assert again.rows_imported == 1
    # Once past the settle time it is not moved a third time.
    later = store_at(engine, now + feature_import.SETTLE * 3).import_records()
    assert later.rows_imported == 0


def test_new_records_after_an_import_move_alone(engine: Engine) -> None:
    add_at(engine, T0, *[f"old {i}" for i in range(30)])
    store_at(engine, T0 + timedelta(minutes=1)).import_records()
    new_ids = add_at(engine, T0 + timedelta(minutes=2), "new 1", "new 2", "new 3")

    result = store_at(engine, T0 + timedelta(minutes=3)).import_records()

    assert result.rows_imported == 3
    assert result.total_records == 33
    assert [stored(engine)[i] for i in new_ids] == ["new 1", "new 2", "new 3"]


def test_full_import_moves_every_record(engine: Engine) -> None:
    add_at(engine, T0, "a", "b", "c")
    store_at(engine, T0 + timedelta(minutes=1)).import_records()

    result = store_at(engine, T0 + timedelta(minutes=2)).import_records(full=True)

    assert result.rows_imported == 3
    assert result.details["full_import"] is True


def test_keyset_crosses_chunks_of_equal_timestamps(engine: Engine) -> None:
    """Many records with one updated_at: the (updated_at, id) keyset must not lose or repeat
    any across chunk borders (chunk 3 over 7 rows: 3 + 3 + 1)."""
    ids = add_at(engine, T0, *[f"t{i}" for i in range(7)])
    window = feature_import.open_window(
        engine, "test", clock=lambda: T0 + timedelta(minutes=1), full=True
    )

    chunks = list(feature_import.iter_changed(engine, window, chunk=3))

    assert [len(c) for c in chunks] == [3, 3, 1]
    assert [row.id for c in chunks for row in c] == ids


def test_failed_import_keeps_the_watermark(engine: Engine) -> None:
    add_at(engine, T0, "a")
    store_at(engine, T0 + timedelta(minutes=1)).import_records()
    before = feature_import.stored_watermark(engine, LocalFeatureStore.TARGET)
    add_at(engine, T0 + timedelta(minutes=2), "b")
    store = store_at(engine, T0 + timedelta(minutes=3))
    db.features.drop(engine)  # the write fails: the import must not advance its watermark

    with pytest.raises(sa.exc.DBAPIError):
        store.import_records()

    assert feature_import.stored_watermark(engine, LocalFeatureStore.TARGET) == before
    db.features.create(engine)
    assert store.import_records().rows_imported == 1
    assert stored(engine) == {2: "b"}
