"""Feature imports of one target run one at a time, and the local store stamps import times.

Two imports of the local store overlap (the CLI's ``import-data`` and a Dagster run of
``features``): A reads a page holding record 1's first edit and is held there; the record is
edited again; B starts while the database's clock has stepped back an hour. Before the guard, B
ran to the end beside A and A then wrote its older page last: the store served the first edit
behind a watermark that had passed the second, and the stored import time moved back by the
step. Now B waits for A's advisory lock (seen in ``pg_locks``: a state, not a time), opens its
window after A committed, and stamps its rows just after A's time whatever the clock says.
The database's clock is injected (``feature_import.database_now``); PostgreSQL is real.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import Connection, Engine

from batchinfer_dagster import db, feature_import
from batchinfer_dagster.clients.feature_store import LocalFeatureStore
from batchinfer_dagster.records import add_records, edit_record
from batchinfer_dagster.settings import Settings
from batchinfer_testing.deployment import engine_of, rows
from batchinfer_testing.transactions import Worker, finished_or_waiting_on_a_lock

A_TIME = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
TICK = timedelta(microseconds=1)


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_an_import_waits_for_the_one_in_progress_and_stamps_after_it(
    app_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = engine_of(app_settings)
    store = LocalFeatureStore(engine)
    [record] = add_records(engine, ["first text"])
    edit_record(engine, record, "first edit")

    # The database's clock: A's import at A_TIME, then stepped back an hour.
    clock = {"A": A_TIME, "B": A_TIME - timedelta(hours=1)}
    monkeypatch.setattr(
        feature_import, "database_now", lambda c: clock[threading.current_thread().name]
    )
    a_read, a_may_write = threading.Event(), threading.Event()
    real_iter_changed = feature_import.iter_changed

    def iter_changed(engine: Engine, window: feature_import.ImportWindow) -> Iterable[Any]:
        pages = list(real_iter_changed(engine, window))
        if threading.current_thread().name == "A":
            a_read.set()  # A holds record 1's first edit, and waits
            assert a_may_write.wait(timeout=120)
        return pages

    monkeypatch.setattr(feature_import, "iter_changed", iter_changed)
    first = Worker(store.import_records, name="A")
    first.start()
    assert a_read.wait(timeout=120)
    edit_record(engine, record, "second edit")
    second = Worker(store.import_records, name="B")
    second.start()
    finished_or_waiting_on_a_lock(engine, second, wait_event="advisory")
    assert second.is_alive(), "B imported while A was in progress"
    a_may_write.set()
    assert first.outcome().rows_imported == 1
    assert second.outcome().rows_imported == 1

    [feature] = rows(app_settings, db.features)
    assert (feature.record_id, feature.text) == (record, "second edit")
    # B's clock was an hour behind A's: its rows are stamped just after A's import.
    assert feature.feature_timestamp == A_TIME + TICK
    [imported] = rows(app_settings, db.feature_imports)
    assert imported.imported_at == A_TIME + TICK
    with engine.connect() as connection:
        assert imported.imported_through == feature_import.committed_horizon(connection)


def test_the_local_store_stamps_the_import_time_not_the_writer_clock(
    app_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = engine_of(app_settings)
    store = LocalFeatureStore(engine)
    [record] = add_records(engine, ["some text"])
    # The writer's clock was a day behind.
    with engine.begin() as connection:
        connection.execute(sa.update(db.data_points).values(updated_at=A_TIME - timedelta(days=1)))
    times = iter([A_TIME, A_TIME - timedelta(hours=1)])

    def database_now(connection: Connection) -> datetime:
        return next(times)

    monkeypatch.setattr(feature_import, "database_now", database_now)
    store.import_records()
    [feature] = rows(app_settings, db.features)
    assert feature.feature_timestamp == A_TIME
    # The database's clock steps back an hour before the next import: stamped after the last.
    edit_record(engine, record, "edited")
    store.import_records()
    [feature] = rows(app_settings, db.features)
    assert (feature.text, feature.feature_timestamp) == ("edited", A_TIME + TICK)
