"""Giving up on a batch while a late run of it settles, on SQLite and PostgreSQL.

``dead_letter_batch`` reads the batch's queued requests, then dead-letters them. A run of the
same batch settling between the two (reconcile gave up on a run that was slow, not lost) used
to be overwritten: its done requests became dead letters, open for records it had just
predicted. The reading is now locked, so the settle, tried right at ``dead_letter_batch``'s
first write, cannot commit: here it fails at once on an impatient engine, and runs after.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from batchinfer_dagster import db, ledger
from batchinfer_dagster.receipts import Configuration, ModelIdentity, Parameters
from batchinfer_dagster.settings import Settings
from batchinfer_protocol.zero_shot import Prediction
from batchinfer_testing.deployment import engine_of, rows
from batchinfer_testing.lock_waits import impatient_engine

NOW = datetime(2026, 12, 6, 2, 0, tzinfo=UTC)
CONFIGURATION = Configuration(
    ModelIdentity("tiny-nli", "sha256:aaa"),
    Parameters(
        candidate_labels=("a", "b"),
        hypothesis_template="This text is about {}.",
        label_descriptions={},
        multi_label=False,
    ),
)


def test_a_settle_cannot_slip_between_dead_letter_batchs_read_and_its_writes(
    app_settings: Settings,
) -> None:
    engine = engine_of(app_settings)
    (key,) = ledger.create_batches(engine, [1, 2], source="test", batch_size=8, now=NOW)
    requests = ledger.start_batch(engine, key, run_id="late-run", now=NOW)
    settlement = ledger.Settlement(
        batch_key=key,
        run_id="late-run",
        requests=requests,
        configuration=CONFIGURATION,
        answers={i: Prediction(f"text {i}", ["a", "b"], [0.6, 0.4]) for i in (1, 2)},
        text_digests={1: "d1", 2: "d2"},
        feature_wait=timedelta(minutes=10),
        now=NOW,
    )
    impatient = impatient_engine(app_settings.resolved_database_url)
    tried: list[object] = []

    def settle_before_the_first_write(
        connection: sa.Connection, cursor: Any, statement: str, *args: Any
    ) -> None:
        if not tried and statement.lstrip().upper().startswith("UPDATE PREDICTION_REQUESTS"):
            try:
                tried.append(ledger.settle_batch(impatient, settlement))
            except sa.exc.OperationalError as error:
                tried.append(error)

    sa.event.listen(engine, "before_cursor_execute", settle_before_the_first_write)
    try:
        given_up = ledger.dead_letter_batch(engine, key, reason="out of attempts", now=NOW)
    finally:
        sa.event.remove(engine, "before_cursor_execute", settle_before_the_first_write)
        impatient.dispose()

    assert len(tried) == 1
    predicted = {row.record_id for row in rows(app_settings, db.predictions)}
    table = db.dead_letters
    still_open = {r.record_id for r in rows(app_settings, table, table.c.resolved_at.is_(None))}
    assert not predicted & still_open, "an open dead letter for a predicted record"
    assert isinstance(tried[0], sa.exc.OperationalError)  # the settle had to wait
    assert given_up == 2

    # The late run settles after all: its predictions resolve the dead letters.
    assert ledger.settle_batch(engine, settlement) == (0, 0)
    assert {row.record_id for row in rows(app_settings, db.predictions)} == {1, 2}
    assert [r for r in rows(app_settings, table) if r.resolved_by_run != "late-run"] == []
