"""The incremental feature import on the local store, SQLite and PostgreSQL: the change numbers.

The database numbers every record write in commit order (migration 0004's triggers); an import
moves the changes numbered in ``(since, through]``, ``through`` being the committed horizon.
No clock is involved: records are stamped with chosen ``updated_at`` values (a clock that runs
fast, then steps back) to show the import does not look at them.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy import Engine

from batchinfer_dagster import db, feature_import
from batchinfer_dagster.clients.feature_store import LocalFeatureStore
from batchinfer_dagster.feature_import import ImportWindow
from batchinfer_dagster.records import add_records
from batchinfer_dagster.settings import Settings

T0 = datetime(2026, 11, 30, 12, 0, 0, tzinfo=UTC)


@pytest.fixture
def engine(app_settings: Settings) -> Engine:
    return db.engine_for(app_settings.resolved_database_url)


def add_at(engine: Engine, when: datetime, *texts: str) -> list[int]:
    """Insert records stamped ``when`` by the writer's clock, as any writer could."""
    table = db.data_points
    with engine.begin() as connection:
        result = connection.execute(
            table.insert().returning(table.c.id, sort_by_parameter_order=True),
            [{"text": text, "created_at": when, "updated_at": when} for text in texts],
        )
        return list(result.scalars())


def change(engine: Engine, record_id: int, **values: object) -> None:
    table = db.data_points
    with engine.begin() as connection:
        connection.execute(sa.update(table).where(table.c.id == record_id).values(**values))


def delete(engine: Engine, record_id: int) -> None:
    with engine.begin() as connection:
        connection.execute(sa.delete(db.data_points).where(db.data_points.c.id == record_id))


def change_seq(engine: Engine, record_id: int) -> int:
    table = db.data_points
    with engine.connect() as connection:
        return connection.execute(
            sa.select(table.c.change_seq).where(table.c.id == record_id)
        ).scalar_one()


def horizon(engine: Engine) -> int:
    with engine.connect() as connection:
        return feature_import.committed_horizon(connection)


def stored(engine: Engine) -> dict[int, str]:
    with engine.connect() as connection:
        rows = connection.execute(sa.select(db.features.c.record_id, db.features.c.text))
        return {row.record_id: row.text for row in rows}


def current(engine: Engine) -> dict[int, str]:
    with engine.connect() as connection:
        rows = connection.execute(sa.select(db.data_points.c.id, db.data_points.c.text))
        return {row.id: row.text for row in rows}


def test_first_import_moves_everything_and_stores_the_horizon(engine: Engine) -> None:
    add_at(engine, T0, "a", "b")

    result = LocalFeatureStore(engine).import_records()

    assert result.rows_imported == 2
    assert result.details["since_change"] is None
    assert stored(engine) == {1: "a", 2: "b"}
    assert feature_import.stored_watermark(engine, LocalFeatureStore.TARGET) == horizon(engine)
    assert horizon(engine) == max(change_seq(engine, 1), change_seq(engine, 2)) > 0


def test_every_writer_is_numbered_in_order_by_the_database(engine: Engine) -> None:
    """Raw SQL, an ORM-less update of text: numbered; a change of another column: not."""
    with engine.begin() as connection:
        connection.execute(
            sa.text(
                "INSERT INTO data_points (text, created_at, updated_at) VALUES ('raw', :t, :t)"
            ),
            {"t": T0},
        )
    [first] = current(engine)
    [second] = add_records(engine, ["added"])
    assert (change_seq(engine, first), change_seq(engine, second)) == (1, 2)
    change(engine, first, text="raw, edited")
    assert change_seq(engine, first) == 3
    change(engine, second, updated_at=T0)  # not a change of the record's text
    assert change_seq(engine, second) == 2
    assert horizon(engine) == 3


def test_window_bounds_since_excluded_through_included(engine: Engine) -> None:
    """Changes 1..5: the window (2, 4] moves exactly 3 and 4."""
    ids = [add_at(engine, T0, f"t{i}")[0] for i in range(1, 6)]
    assert [change_seq(engine, i) for i in ids] == [1, 2, 3, 4, 5]

    window = ImportWindow(target="test", since=2, through=4, opened_at=T0)
    moved = [row.id for rows in feature_import.iter_changed(engine, window) for row in rows]

    assert moved == [ids[2], ids[3]]


def test_deletions_window_bounds_since_excluded_through_included(engine: Engine) -> None:
    ids = [add_at(engine, T0, text)[0] for text in ("a", "b", "c")]  # changes 1..3
    for record_id in ids:
        delete(engine, record_id)  # changes 4, 5, 6

    window = ImportWindow(target="test", since=4, through=5, opened_at=T0)
    deleted = [i for chunk in feature_import.iter_deleted(engine, window) for i in chunk]

    assert deleted == [ids[1]]


def test_second_import_with_nothing_new_moves_nothing(engine: Engine) -> None:
    add_at(engine, T0, *[f"text {i}" for i in range(25)])
    store = LocalFeatureStore(engine)
    store.import_records()

    again = store.import_records()

    assert again.rows_imported == 0
    assert again.total_records == 25


def test_the_host_clock_stepped_back_hides_nothing(engine: Engine) -> None:
    """Records stamped an hour ahead (the clock ran fast) are imported; then the clock steps
    back and the records stamped an hour earlier are imported by the next import, as are those
    stamped a day before anything else."""
    store = LocalFeatureStore(engine)
    add_at(engine, T0 + timedelta(hours=1), "while the clock ran fast")
    assert store.import_records().rows_imported == 1
    stepped_back = add_at(engine, T0, "after NTP stepped the clock back")
    long_ago = add_at(engine, T0 - timedelta(days=1), "a writer whose clock is a day late")

    result = store.import_records()

    assert result.rows_imported == 2
    assert stored(engine) == current(engine)
    assert set(stepped_back + long_ago) <= set(stored(engine))


def test_a_transaction_held_open_across_an_import_arrives_in_the_next(engine: Engine) -> None:
    """A load whose transaction stays open while an import runs, and a second writer behind
    it: the import moves neither (nothing past the committed horizon), the next one both."""
    store = LocalFeatureStore(engine)
    add_at(engine, T0, "before")
    store.import_records()
    held = engine.connect()
    transaction = held.begin()
    held.execute(
        db.data_points.insert(), [{"text": "slow load", "created_at": T0, "updated_at": T0}]
    )
    # A second writer starts now; it waits for the counter row (PostgreSQL) or the write lock
    # (SQLite) until the held transaction commits, so its number comes after.
    behind = threading.Thread(target=add_at, args=(engine, T0, "behind the slow load"))
    behind.start()
    try:
        # The import's reads, while both wait (on SQLite its own watermark write would wait for
        # the write lock too, so the window is stored once the load committed, as it would be).
        window = feature_import.open_window(engine, LocalFeatureStore.TARGET)
        during = [row for rows in feature_import.iter_changed(engine, window) for row in rows]
    finally:
        transaction.commit()
        held.close()
        behind.join(timeout=60)
    assert not behind.is_alive()
    feature_import.commit_watermark(engine, window, len(during))

    assert during == []
    after = store.import_records()
    assert after.rows_imported == 2
    assert stored(engine) == current(engine)
    assert sorted(stored(engine).values()) == ["before", "behind the slow load", "slow load"]


def test_deleted_records_leave_the_store_on_the_next_import(engine: Engine) -> None:
    ids = add_at(engine, T0, "keep", "erase", "change then erase")
    store = LocalFeatureStore(engine)
    store.import_records()
    delete(engine, ids[1])
    change(engine, ids[2], text="changed")
    delete(engine, ids[2])

    result = store.import_records()

    assert result.details["rows_deleted"] == 2
    assert stored(engine) == {ids[0]: "keep"} == current(engine)
    assert result.total_records == 1


def test_full_import_rebuilds_exactly_the_current_records(engine: Engine) -> None:
    """A stale feature (a record deleted before tombstones existed, or written straight into
    the store) is removed; every existing record is there with its current text."""
    ids = add_at(engine, T0, "a", "b", "c")
    store = LocalFeatureStore(engine)
    store.import_records()
    store.upsert([(999, "a record that does not exist")])
    delete(engine, ids[0])
    change(engine, ids[1], text="b, edited")

    result = store.import_records(full=True)

    assert result.rows_imported == 2
    assert result.details["full_import"] is True
    assert stored(engine) == current(engine) == {ids[1]: "b, edited", ids[2]: "c"}


def test_keyset_crosses_chunk_borders(engine: Engine) -> None:
    """7 records, chunks of 3: 3 + 3 + 1, none lost or repeated; the key compared is the key
    ordered by (records renumbered out of id order by an edit)."""
    ids = add_at(engine, T0, *[f"t{i}" for i in range(7)])
    change(engine, ids[0], text="t0, edited")  # now the newest change
    window = feature_import.open_window(engine, "test", full=True)

    chunks = list(feature_import.iter_changed(engine, window, chunk=3))

    assert [len(c) for c in chunks] == [3, 3, 1]
    assert [row.id for c in chunks for row in c] == [*ids[1:], ids[0]]


def test_deletions_keyset_crosses_chunk_borders(engine: Engine) -> None:
    """7 records deleted in one transaction (one change number on PostgreSQL), chunks of 3."""
    ids = add_at(engine, T0, *[f"t{i}" for i in range(7)])
    with engine.begin() as connection:
        connection.execute(sa.delete(db.data_points))
    window = feature_import.open_window(engine, "test")

    chunks = list(feature_import.iter_deleted(engine, window, chunk=3))

    assert [len(c) for c in chunks] == [3, 3, 1]
    assert [i for c in chunks for i in c] == ids


def test_failed_import_keeps_the_watermark(engine: Engine) -> None:
    add_at(engine, T0, "a")
    store = LocalFeatureStore(engine)
    store.import_records()
    before = feature_import.stored_watermark(engine, LocalFeatureStore.TARGET)
    add_at(engine, T0, "b")
    db.features.drop(engine)  # the write fails: the import must not advance its watermark

    with pytest.raises(sa.exc.DBAPIError):
        store.import_records()

    assert feature_import.stored_watermark(engine, LocalFeatureStore.TARGET) == before
    db.features.create(engine)
    assert store.import_records().rows_imported == 1
    assert stored(engine) == {2: "b"}


def test_0004_numbers_existing_records_and_every_target_imports_them_once_more(
    database_url: str,
) -> None:
    """Records stored before 0004 get their id as change number, the counter continues above
    the largest id, and a target imported under the old time watermark starts again from 0."""
    from alembic import command

    engine = db.create_app_engine(database_url)
    try:
        config = db._alembic_config()  # noqa: SLF001 - the test migrates to a chosen revision
        with engine.begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, "0003")
        with engine.begin() as connection:
            for text in ("old 1", "old 2", "old 3"):
                connection.execute(
                    sa.text(
                        "INSERT INTO data_points (text, created_at, updated_at) "
                        "VALUES (:text, :t, :t)"
                    ),
                    {"text": text, "t": T0},
                )
            connection.execute(
                sa.text("INSERT INTO feature_imports VALUES (:target, :t, :t, 3, false)"),
                {"target": LocalFeatureStore.TARGET, "t": T0 + timedelta(days=1)},
            )
        db.upgrade(engine)

        assert [change_seq(engine, i) for i in (1, 2, 3)] == [1, 2, 3]
        assert horizon(engine) == 3
        assert feature_import.stored_watermark(engine, LocalFeatureStore.TARGET) == 0
        [new] = add_records(engine, ["new"])
        assert change_seq(engine, new) == 4
        assert LocalFeatureStore(engine).import_records().rows_imported == 4
    finally:
        engine.dispose()


def renumber(engine: Engine, table: sa.Table, key: sa.Column, numbers: dict[int, int]) -> None:
    """Set rows' change numbers by hand (the trigger numbers text changes only), to make the
    orders a paging bug would show: ties within a number, ids out of change order."""
    with engine.begin() as connection:
        for row_id, number in numbers.items():
            connection.execute(sa.update(table).where(key == row_id).values(change_seq=number))


def deleted_at(engine: Engine, numbers: dict[int, int]) -> None:
    """Tombstones of records ``id → change number``, as the deletion trigger writes them."""
    with engine.begin() as connection:
        connection.execute(
            sa.insert(db.record_deletions),
            [{"record_id": i, "change_seq": n} for i, n in numbers.items()],
        )


# (id → change number): three records share number 5 (one PostgreSQL transaction), and the
# lowest id has the highest number (an old record, edited last). In (change_seq, id) order:
# 2, 3, 4 (number 5), 5 (number 6), 1 (number 7). A page bound on the number alone skips the
# rest of a tie; one on the id alone skips record 1; pages of 2 cut through the tie.
TIES = {1: 7, 2: 5, 3: 5, 4: 5, 5: 6}
TIES_ORDER = [2, 3, 4, 5, 1]


def changed_pages(engine: Engine, window: ImportWindow, chunk: int) -> list[list[int]]:
    return [[row.id for row in rows] for rows in feature_import.iter_changed(engine, window, chunk)]


def test_pages_follow_change_number_then_id_across_ties(engine: Engine) -> None:
    add_at(engine, T0, *[f"t{i}" for i in TIES])
    renumber(engine, db.data_points, db.data_points.c.id, TIES)
    deleted_at(engine, {record_id + 100: number for record_id, number in TIES.items()})
    window = ImportWindow(target="test", since=None, through=7, opened_at=T0)

    changed = changed_pages(engine, window, chunk=2)
    deleted = list(feature_import.iter_deleted(engine, window, chunk=2))

    assert changed == [[2, 3], [4, 5], [1]]
    assert deleted == [[i + 100 for i in TIES_ORDER[:2]], [104, 105], [101]]


@pytest.mark.parametrize(("records", "pages"), [(3, [3]), (4, [3, 1])])
def test_a_page_ends_at_the_page_size(engine: Engine, records: int, pages: list[int]) -> None:
    """Page size 3: exactly 3 rows are one page (then the next read finds none), 4 are 3 + 1."""
    ids = add_at(engine, T0, *[f"t{i}" for i in range(records)])
    deleted_at(engine, {i + 100: horizon(engine) for i in ids})
    window = feature_import.open_window(engine, "test", full=True)

    changed = changed_pages(engine, window, chunk=3)
    deleted = list(feature_import.iter_deleted(engine, window, chunk=3))

    assert [len(page) for page in changed] == pages
    assert [len(page) for page in deleted] == pages
    assert [i for page in changed for i in page] == ids


def test_a_window_is_timed_by_the_database_never_before_the_last_import(engine: Engine) -> None:
    """The window's time is the database's, not a writer's ``updated_at``; should the database's
    clock step back behind the last import's time, the next window is just after it."""
    add_at(engine, T0 - timedelta(days=30), "stamped by a writer a month late")
    first = feature_import.open_window(engine, "test")
    with engine.connect() as connection:
        assert first.opened_at <= feature_import.database_now(connection)
    assert first.opened_at > T0  # the writer's stamp played no part
    feature_import.commit_watermark(engine, first, 1)
    ahead = first.opened_at + timedelta(hours=1)  # the database's clock then steps back an hour
    with engine.begin() as connection:
        connection.execute(sa.update(db.feature_imports).values(imported_at=ahead))

    second = feature_import.open_window(engine, "test")

    assert second.opened_at == ahead + timedelta(microseconds=1)
