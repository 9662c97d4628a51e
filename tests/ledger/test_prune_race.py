"""Retention pruning a settled batch while a re-materialization starts it, on SQLite and
PostgreSQL.

``prune_settled`` used to read which batches were settled before the transaction that deleted
their finished requests: a run started in between (``start_batch`` marks the batch running and
reads its requests) lost the requests it had just read. The settled batches are now read locked
in the deleting transaction, so the start, tried right at the first delete, cannot commit (it
fails at once on an impatient engine), and starts afterwards with what is left.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from batchinfer_dagster import db, ledger
from batchinfer_dagster.settings import Settings
from batchinfer_testing.deployment import engine_of, rows
from batchinfer_testing.lock_waits import impatient_engine

NOW = datetime(2026, 12, 6, 3, 0, tzinfo=UTC)


def test_a_run_cannot_start_between_prunes_read_and_its_deletes(app_settings: Settings) -> None:
    engine = engine_of(app_settings)
    (key,) = ledger.create_batches(engine, [1, 2], source="test", batch_size=8, now=NOW)
    table = db.prediction_requests
    with engine.begin() as connection:
        connection.execute(sa.update(table).values(status=ledger.RequestStatus.DONE))
        connection.execute(
            sa.update(db.prediction_batches).values(status=ledger.BatchStatus.SUCCEEDED)
        )
    impatient = impatient_engine(app_settings.resolved_database_url)
    tried: list[object] = []

    def start_before_the_first_delete(
        connection: sa.Connection, cursor: Any, statement: str, *args: Any
    ) -> None:
        if not tried and statement.lstrip().upper().startswith("DELETE"):
            try:
                tried.append(ledger.start_batch(impatient, key, run_id="rerun", now=NOW))
            except sa.exc.OperationalError as error:
                tried.append(error)

    sa.event.listen(engine, "before_cursor_execute", start_before_the_first_delete)
    try:
        pruned = ledger.prune_settled(engine, [key])
    finally:
        sa.event.remove(engine, "before_cursor_execute", start_before_the_first_delete)
        impatient.dispose()

    assert len(tried) == 1
    if not isinstance(tried[0], Exception):  # the run started and read its requests
        batches = {r.batch_key for r in rows(app_settings, db.prediction_batches)}
        with_requests = {r.batch_key for r in rows(app_settings, table)}
        assert key in batches & with_requests, "a started batch's rows were pruned under it"
    assert isinstance(tried[0], sa.exc.OperationalError)  # the start had to wait
    assert pruned == (2, 1)
