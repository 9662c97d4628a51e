"""The time reconcile credits a batch that has no run yet (``BatchState.unrun_for``), and what
``record_unrun`` writes: each gap between looks counts, between 0 and half of ``stale_after``.

Pure arithmetic first (``unrun_seconds`` None vs 0.0 vs some, the bound at its value and one
past, a clock stepped back), then the write: only queued or running batches take the credit.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from batchinfer_dagster import db, ledger
from batchinfer_dagster.ledger.reconcile import BatchState, ReconcileOutcome, RunState, record_unrun
from batchinfer_dagster.settings import Settings
from batchinfer_testing.deployment import engine_of, rows

LOOKED = datetime(2026, 12, 5, 9, 0, tzinfo=UTC)
STALE = timedelta(minutes=2)
HALF = STALE / 2
TICK = timedelta(microseconds=1)
B = ledger.BatchStatus


def state(unrun_seconds: float | None) -> BatchState:
    return BatchState("b", B.QUEUED, 1, None, LOOKED, unrun_seconds)


@pytest.mark.parametrize(
    ("after", "credited"),
    [
        (timedelta(seconds=10), timedelta(seconds=10)),
        (HALF - TICK, HALF - TICK),
        (HALF, HALF),
        (HALF + TICK, HALF),
        (timedelta(hours=1), HALF),
        (-timedelta(hours=1), timedelta(0)),
    ],
    ids=["10s", "below-half", "at-half", "one-past-half", "an-hour", "back-an-hour"],
)
def test_each_gap_is_credited_up_to_half_of_stale_after(
    after: timedelta, credited: timedelta
) -> None:
    assert state(None).unrun_for(LOOKED + after, stale_after=STALE) == credited
    assert state(30.0).unrun_for(LOOKED + after, stale_after=STALE) == credited + timedelta(
        seconds=30
    )


def test_a_credit_of_zero_adds_nothing() -> None:
    assert state(0.0).unrun_for(LOOKED + timedelta(seconds=4), stale_after=STALE) == timedelta(
        seconds=4
    )
    # Another stale_after, another bound: the half is of the argument, not of STALE_AFTER.
    assert state(None).unrun_for(LOOKED + STALE, stale_after=timedelta(seconds=20)) == (
        timedelta(seconds=10)
    )


def test_record_unrun_writes_queued_and_running_batches_only(app_settings: Settings) -> None:
    engine = engine_of(app_settings)
    keys = ledger.create_batches(engine, [1, 2, 3, 4], source="t", batch_size=1, now=LOOKED)
    statuses = [B.QUEUED, B.RUNNING, B.SUCCEEDED, B.FAILED]
    table = db.prediction_batches
    with engine.begin() as connection:
        for key, status in zip(keys, statuses, strict=True):
            connection.execute(table.update().where(table.c.batch_key == key).values(status=status))
    later = LOOKED + timedelta(seconds=10)
    record_unrun(engine, {key: timedelta(seconds=7.5) for key in keys}, now=later)
    record_unrun(engine, {}, now=later + timedelta(hours=1))  # nothing to write: nothing changes
    written = {
        row.batch_key: (row.unrun_seconds, row.updated_at) for row in rows(app_settings, table)
    }
    assert written == {
        keys[0]: (7.5, later),
        keys[1]: (7.5, later),
        keys[2]: (None, LOOKED),
        keys[3]: (None, LOOKED),
    }


def test_an_outcome_starts_empty() -> None:
    assert ReconcileOutcome() == ReconcileOutcome(retried={}, dead_lettered=[])


def test_a_batch_with_a_run_in_flight_gets_no_unrun_credit(app_settings: Settings) -> None:
    """Only batches Dagster has no run of are credited; one whose run is in flight, queued or
    running alike, is only touched, its credit left as it was (none)."""
    engine = engine_of(app_settings)
    keys = ledger.create_batches(engine, [1, 2], source="t", batch_size=1, now=LOOKED)
    ledger.count_attempt(engine, keys, now=LOOKED)
    table = db.prediction_batches
    with engine.begin() as connection:
        connection.execute(
            table.update().where(table.c.batch_key == keys[1]).values(status=B.RUNNING)
        )
    later = LOOKED + timedelta(minutes=1)

    outcome = ledger.reconcile(
        engine,
        lambda candidates: {c.batch_key: RunState.IN_FLIGHT for c in candidates},
        max_attempts=3,
        now=later,
    )

    assert outcome == ReconcileOutcome()
    written = {
        row.batch_key: (row.unrun_seconds, row.updated_at) for row in rows(app_settings, table)
    }
    assert written == {keys[0]: (None, later), keys[1]: (None, later)}
