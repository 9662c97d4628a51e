"""A run interrupted by a stop of ``make run`` costs its batch no attempt; every other end does.

Reconcile is given each batch's run state (``RunState.INTERRUPTED``: the stop tagged the run),
on SQLite and PostgreSQL. Each case sits at the attempt limit or one from it, so a limit that
counted all attempts, an interrupted attempt that was charged, or a charged one that was not,
changes an answer.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa

from batchinfer_dagster import db, ledger
from batchinfer_dagster.ledger.reconcile import BatchState, RunState, reconcile
from batchinfer_dagster.settings import Settings
from batchinfer_testing.deployment import engine_of, rows

NOW = datetime(2026, 12, 6, 3, 0, tzinfo=UTC)
QUIET = NOW - timedelta(minutes=1)
MAX_ATTEMPTS = 3
B = ledger.BatchStatus


def batch(engine: sa.Engine, *, status: str, attempts: int, uncharged: int = 0) -> str:
    """One batch of one request, quiet for a minute, with a run requested ``attempts`` times."""
    (key,) = ledger.create_batches(engine, [1], source="t", batch_size=1, now=NOW)
    table = db.prediction_batches
    with engine.begin() as connection:
        connection.execute(
            table.update()
            .where(table.c.batch_key == key)
            .values(
                status=status,
                attempts=attempts,
                uncharged_attempts=uncharged,
                updated_at=QUIET,
                run_id=f"run-{key}",
            )
        )
    return key


def state(settings: Settings, key: str) -> tuple[str, int, int]:
    table = db.prediction_batches
    [row] = rows(settings, table, table.c.batch_key == key)
    return row.status, row.attempts, row.uncharged_attempts


def runs(states: dict[str, RunState]):  # noqa: ANN201 - a ledger.CurrentRuns
    def current_runs(candidates: Sequence[BatchState]) -> dict[str, RunState]:
        return {c.batch_key: states[c.batch_key] for c in candidates if c.batch_key in states}

    return current_runs


def test_an_interrupted_run_is_retried_at_once_without_charging_its_attempt(
    app_settings: Settings,
) -> None:
    """At the limit, an interrupted attempt is retried (a finished one is given up); the
    retry is a new attempt number (its run key), the interrupted one uncharged."""
    engine = engine_of(app_settings)
    interrupted = batch(engine, status=B.RUNNING, attempts=MAX_ATTEMPTS)
    interrupted_failed = batch(engine, status=B.FAILED, attempts=MAX_ATTEMPTS, uncharged=1)
    finished = batch(engine, status=B.RUNNING, attempts=MAX_ATTEMPTS)

    outcome = reconcile(
        engine,
        runs(
            {
                interrupted: RunState.INTERRUPTED,
                interrupted_failed: RunState.INTERRUPTED,
                finished: RunState.FINISHED,
            }
        ),
        max_attempts=MAX_ATTEMPTS,
        now=NOW,
    )

    assert outcome.retried == {interrupted: MAX_ATTEMPTS + 1, interrupted_failed: MAX_ATTEMPTS + 1}
    assert outcome.dead_lettered == [finished]
    assert state(app_settings, interrupted) == (B.QUEUED, MAX_ATTEMPTS + 1, 1)
    assert state(app_settings, interrupted_failed) == (B.QUEUED, MAX_ATTEMPTS + 1, 2)
    assert state(app_settings, finished) == (B.DEAD_LETTERED, MAX_ATTEMPTS, 0)


def test_the_limit_counts_charged_attempts_only(app_settings: Settings) -> None:
    """A failed run after interrupted ones: retried while its charged attempts are one short
    of the limit, given up on at the limit, however many attempts were uncharged."""
    engine = engine_of(app_settings)
    one_short = batch(engine, status=B.FAILED, attempts=MAX_ATTEMPTS + 1, uncharged=2)
    at_limit = batch(engine, status=B.FAILED, attempts=MAX_ATTEMPTS + 2, uncharged=2)
    finished_one_short = batch(engine, status=B.RUNNING, attempts=MAX_ATTEMPTS, uncharged=1)

    outcome = reconcile(
        engine,
        runs({finished_one_short: RunState.FINISHED}),
        max_attempts=MAX_ATTEMPTS,
        now=NOW,
    )

    assert outcome.retried == {one_short: MAX_ATTEMPTS + 2, finished_one_short: MAX_ATTEMPTS + 1}
    assert outcome.dead_lettered == [at_limit]
    # A charged retry leaves the uncharged count as it was.
    assert state(app_settings, one_short) == (B.QUEUED, MAX_ATTEMPTS + 2, 2)
    assert state(app_settings, finished_one_short) == (B.QUEUED, MAX_ATTEMPTS + 1, 1)
    [letter] = rows(app_settings, db.dead_letters)
    assert letter.reason.startswith(f"batch {at_limit} failed after {MAX_ATTEMPTS} attempts: ")


def test_an_interrupted_run_still_in_flight_or_a_batch_without_a_run_is_not_retried(
    app_settings: Settings,
) -> None:
    """Only a finished run counts as interrupted: one in flight is waited for, and a batch
    Dagster has no run of waits for ``stale_after`` as before, its attempts untouched."""
    engine = engine_of(app_settings)
    flying = batch(engine, status=B.RUNNING, attempts=1)
    unrun = batch(engine, status=B.QUEUED, attempts=1)

    outcome = reconcile(
        engine, runs({flying: RunState.IN_FLIGHT}), max_attempts=MAX_ATTEMPTS, now=NOW
    )

    assert outcome == ledger.ReconcileOutcome()
    assert state(app_settings, flying) == (B.RUNNING, 1, 0)
    assert state(app_settings, unrun) == (B.QUEUED, 1, 0)
