"""Reconcile's choices, each at its bound and one past: which batches it looks at, which it
leaves alone, which it retries and what reason it gives up with.

Every case has a neighbour that the rule must treat differently (a batch a microsecond on the
other side of a deadline, one run state apart, one attempt apart), so a comparison turned
around or a clause dropped changes an answer.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from batchinfer_dagster import db, ledger
from batchinfer_dagster.ledger.reconcile import (
    BatchState,
    RunState,
    batches_to_reconcile,
    reconcile,
)
from batchinfer_dagster.settings import Settings
from batchinfer_testing.deployment import engine_of, rows

NOW = datetime(2026, 12, 5, 9, 0, tzinfo=UTC)
TICK = timedelta(microseconds=1)
RECHECK = timedelta(seconds=10)
STALE = timedelta(minutes=2)
B = ledger.BatchStatus


def batch(engine: sa.Engine, *, status: str, attempts: int, updated_at: datetime) -> str:
    """One batch of one request, in the given state."""
    (key,) = ledger.create_batches(engine, [1], source="t", batch_size=1, now=NOW)
    table = db.prediction_batches
    with engine.begin() as connection:
        connection.execute(
            table.update()
            .where(table.c.batch_key == key)
            .values(status=status, attempts=attempts, updated_at=updated_at, run_id=f"run-{key}")
        )
    return key


def batch_row(settings: Settings, key: str) -> sa.Row:
    [row] = rows(settings, db.prediction_batches, db.prediction_batches.c.batch_key == key)
    return row


class RunsOf:
    """A ``current_runs`` answering from ``states``; ``asked`` records each call's candidates."""

    def __init__(self, states: dict[str, RunState]) -> None:
        self.states = states
        self.asked: list[list[str]] = []

    def __call__(self, candidates: Sequence[BatchState]) -> dict[str, RunState]:
        self.asked.append([c.batch_key for c in candidates])
        return {
            c.batch_key: self.states[c.batch_key] for c in candidates if c.batch_key in self.states
        }


def test_reconcile_looks_at_failed_batches_and_quiet_ones_with_a_run_requested(
    app_settings: Settings,
) -> None:
    """The recheck bound at its value and one past, on both sides of ``now``."""
    engine = engine_of(app_settings)
    looked_at = {
        "failed just now": batch(engine, status=B.FAILED, attempts=1, updated_at=NOW),
        "queued, quiet for exactly the recheck": batch(
            engine, status=B.QUEUED, attempts=1, updated_at=NOW - RECHECK
        ),
        "running, written one past the recheck ahead": batch(
            engine, status=B.RUNNING, attempts=2, updated_at=NOW + RECHECK + TICK
        ),
    }
    skipped = {
        "queued, a tick short of the recheck": batch(
            engine, status=B.QUEUED, attempts=1, updated_at=NOW - RECHECK + TICK
        ),
        "running, written exactly the recheck ahead": batch(
            engine, status=B.RUNNING, attempts=1, updated_at=NOW + RECHECK
        ),
        "queued, never requested": batch(
            engine, status=B.QUEUED, attempts=0, updated_at=NOW - timedelta(hours=1)
        ),
        "succeeded long ago": batch(
            engine, status=B.SUCCEEDED, attempts=1, updated_at=NOW - timedelta(hours=1)
        ),
        "dead-lettered long ago": batch(
            engine, status=B.DEAD_LETTERED, attempts=3, updated_at=NOW - timedelta(hours=1)
        ),
    }

    found = batches_to_reconcile(engine, now=NOW, recheck_after=RECHECK, limit=100)

    assert {state.batch_key for state in found} == set(looked_at.values())
    by_key = {state.batch_key: state for state in found}
    key = looked_at["running, written one past the recheck ahead"]
    assert by_key[key] == BatchState(key, B.RUNNING, 2, f"run-{key}", NOW + RECHECK + TICK)
    assert not set(skipped.values()) & set(by_key)


def test_reconcile_looks_at_the_oldest_batches_first_up_to_its_limit(
    app_settings: Settings,
) -> None:
    engine = engine_of(app_settings)
    ages = [timedelta(minutes=m) for m in (3, 9, 1, 7)]
    keys = [batch(engine, status=B.FAILED, attempts=1, updated_at=NOW - age) for age in ages]

    found = batches_to_reconcile(engine, now=NOW, recheck_after=RECHECK, limit=2)
    assert [state.batch_key for state in found] == [keys[1], keys[3]]

    current_runs = RunsOf({})
    outcome = reconcile(engine, current_runs, max_attempts=5, now=NOW, limit=2)
    assert current_runs.asked == [[keys[1], keys[3]]]
    assert outcome.retried == {keys[1]: 2, keys[3]: 2}


def test_a_batch_with_a_run_in_flight_is_only_touched(app_settings: Settings) -> None:
    """Even a failed batch waits for its unfinished run; its time moves on so the bounded
    reconcile reaches others, and no time without a run is credited to it. A batch without a
    run beside it is looked at too, and credited the minute it was seen without one."""
    engine = engine_of(app_settings)
    earlier = NOW - timedelta(minutes=1)
    flying = batch(engine, status=B.FAILED, attempts=1, updated_at=earlier)
    unrun = batch(engine, status=B.QUEUED, attempts=1, updated_at=earlier)

    outcome = reconcile(engine, RunsOf({flying: RunState.IN_FLIGHT}), max_attempts=5, now=NOW)

    assert outcome == ledger.ReconcileOutcome()
    row = batch_row(app_settings, flying)
    assert (row.status, row.updated_at, row.unrun_seconds) == (B.FAILED, NOW, None)
    row = batch_row(app_settings, unrun)
    assert (row.status, row.attempts, row.updated_at, row.unrun_seconds) == (
        B.QUEUED,
        1,
        NOW,
        60.0,
    )


def test_a_finished_run_or_a_failed_batch_is_retried_at_once(app_settings: Settings) -> None:
    """No ``stale_after`` wait for these: their run is over."""
    engine = engine_of(app_settings)
    quiet = NOW - RECHECK
    finished = batch(engine, status=B.QUEUED, attempts=1, updated_at=quiet)
    finished_running = batch(engine, status=B.RUNNING, attempts=2, updated_at=quiet)
    failed_no_run = batch(engine, status=B.FAILED, attempts=1, updated_at=NOW)

    outcome = reconcile(
        engine,
        RunsOf({finished: RunState.FINISHED, finished_running: RunState.FINISHED}),
        max_attempts=5,
        now=NOW,
    )

    assert outcome.retried == {finished: 2, finished_running: 3, failed_no_run: 2}
    assert outcome.dead_lettered == []


def test_a_batch_without_a_run_waits_until_stale_after_is_credited(
    app_settings: Settings,
) -> None:
    """Credited so far plus the gap since the last look (0 to half of ``stale_after``) reaching
    ``stale_after`` retries; a tick short waits and is credited. A time ahead of ``now`` (the
    clock stepped back) credits nothing; one look, however old, credits at most half."""
    engine = engine_of(app_settings)
    half = STALE / 2

    def credited(key: str, seconds: float | None) -> str:
        table = db.prediction_batches
        with engine.begin() as connection:
            connection.execute(
                table.update().where(table.c.batch_key == key).values(unrun_seconds=seconds)
            )
        return key

    retried = {
        "half credited, half a bound quiet": credited(
            batch(engine, status=B.QUEUED, attempts=1, updated_at=NOW - half),
            half.total_seconds(),
        ),
        "half credited, an hour quiet": credited(
            batch(engine, status=B.RUNNING, attempts=1, updated_at=NOW - timedelta(hours=1)),
            half.total_seconds(),
        ),
    }
    waiting = {
        "half credited, a tick short": credited(
            batch(engine, status=B.QUEUED, attempts=1, updated_at=NOW - half + TICK),
            half.total_seconds(),
        ),
        "never credited, an hour quiet": batch(
            engine, status=B.QUEUED, attempts=1, updated_at=NOW - timedelta(hours=1)
        ),
        "almost stale, written ahead": credited(
            batch(engine, status=B.RUNNING, attempts=1, updated_at=NOW + STALE + TICK),
            (STALE - TICK).total_seconds(),
        ),
    }

    outcome = reconcile(engine, RunsOf({}), max_attempts=5, now=NOW, stale_after=STALE)

    assert outcome.retried == dict.fromkeys(retried.values(), 2)
    found = [batch_row(app_settings, k) for k in waiting.values()]
    assert [row.attempts for row in found] == [1, 1, 1]
    assert [row.updated_at for row in found] == [NOW, NOW, NOW]
    assert [row.unrun_seconds for row in found] == pytest.approx(
        [(STALE - TICK).total_seconds(), half.total_seconds(), (STALE - TICK).total_seconds()]
    )
    assert [batch_row(app_settings, k).unrun_seconds for k in retried.values()] == [None, None]


def test_out_of_attempts_a_batch_is_dead_lettered_with_its_runs_last_error(
    app_settings: Settings,
) -> None:
    """At ``max_attempts`` it gives up, one short it retries; the reason names the batch, its
    attempts and its last error, or says that its runs never finished it."""
    engine = engine_of(app_settings)
    with_error = batch(engine, status=B.FAILED, attempts=3, updated_at=NOW)
    silent = batch(engine, status=B.FAILED, attempts=3, updated_at=NOW)
    one_short = batch(engine, status=B.FAILED, attempts=2, updated_at=NOW)
    requests = db.prediction_requests
    with engine.begin() as connection:
        connection.execute(
            requests.update()
            .where(requests.c.batch_key == with_error)
            .values(error="model server down")
        )

    outcome = reconcile(engine, RunsOf({}), max_attempts=3, now=NOW)

    assert outcome.retried == {one_short: 3}
    assert sorted(outcome.dead_lettered) == sorted([with_error, silent])
    reasons = {row.reason for row in rows(app_settings, db.dead_letters)}
    assert reasons == {
        f"batch {with_error} failed after 3 attempts: model server down",
        f"batch {silent} failed after 3 attempts: its runs never finished it",
    }
    assert {batch_row(app_settings, k).status for k in (with_error, silent)} == {B.DEAD_LETTERED}
