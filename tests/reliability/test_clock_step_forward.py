"""The ledger's deadlines when the host clock steps forward (NTP correcting a clock that ran slow,
a VM resumed, a container on a host whose clock jumped).

Before, each deadline compared the clock now with one time written earlier, so a step forward
of an hour ended a feature wait at once (a dead letter ``unknown record id`` for a record that
may still arrive) and made a batch whose run the daemon had not made yet look lost (a second
run). Now both deadlines are credited gap by gap as the ledger observes them, each gap at most a
bound (``ledger.FEATURE_WAIT_MAX_STEP``, half of reconcile's ``stale_after``): a step moves a
deadline at most that far. Each case steps the injected clock by the bound less a microsecond,
the bound, one microsecond past it and an hour, then lets the clock run on as the sensor would
(look-ups when due, reconcile every ``RECHECK_AFTER``), and asserts when the deadline ends.

Retention is the same kind and is documented rather than guarded: ``old_settled_batches``
compares the creation time with the clock now, so a step forward prunes settled batches early by
the step (months of margin against the queue's retention), and never an unsettled one.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from batchinfer_dagster import db, ledger
from batchinfer_dagster.ledger.reconcile import RECHECK_AFTER, STALE_AFTER
from batchinfer_dagster.settings import Settings
from batchinfer_testing.deployment import engine_of, rows
from batchinfer_testing.ledger_states import request_left_waiting

WRITTEN = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)
TICK = timedelta(microseconds=1)
WAIT = timedelta(seconds=600)
MAX_STEP = ledger.FEATURE_WAIT_MAX_STEP
HALF_STALE = STALE_AFTER / 2


def dead_lettered_at(settings: Settings, first_lookup: datetime) -> datetime:
    """Look the request up at ``first_lookup``, then each time its backoff ends, until it is a
    dead letter; returns when it became one."""
    engine = engine_of(settings)
    now = first_lookup
    for _ in range(100):
        outcome = ledger.recheck_waiting(
            engine, lambda ids: set(), now=now, feature_wait=WAIT, batch_size=8, limit=10
        )
        if outcome.dead_lettered:
            return now
        [request] = rows(settings, db.prediction_requests)
        assert request.status == ledger.RequestStatus.WAITING_FEATURES
        now = max(now, request.not_before)
    raise AssertionError("the request never became a dead letter")


def test_without_a_step_the_wait_ends_at_its_deadline(app_settings: Settings) -> None:
    not_before = request_left_waiting(app_settings, at=WRITTEN, feature_wait=WAIT)
    assert dead_lettered_at(app_settings, not_before) == WRITTEN + WAIT


@pytest.mark.parametrize(
    ("step", "credited"),
    [
        (MAX_STEP - TICK, MAX_STEP - TICK),
        (MAX_STEP, MAX_STEP),
        (MAX_STEP + TICK, MAX_STEP),  # one past the bound: credited the bound
        (HOUR, MAX_STEP),  # before: a dead letter at the first look-up after the step
    ],
    ids=["below-the-bound", "at-the-bound", "one-past", "an-hour"],
)
def test_a_forward_step_ends_a_feature_wait_at_most_the_bound_early(
    app_settings: Settings, step: timedelta, credited: timedelta
) -> None:
    request_left_waiting(app_settings, at=WRITTEN, feature_wait=WAIT)
    # The clock steps forward by ``step`` before the first look-up (due 5 s after the run).
    stepped = WRITTEN + step
    ended = dead_lettered_at(app_settings, stepped)
    # The wait ran on after the step for what was not credited to the step itself.
    assert ended - stepped == WAIT - credited
    [letter] = rows(app_settings, db.dead_letters)
    assert (letter.reason, letter.record_id) == (ledger.UNKNOWN_RECORD, 42)


def test_a_forward_step_does_not_end_a_failed_lookups_wait(app_settings: Settings) -> None:
    """A look-up that fails (the store down) is credited like one that answered: bounded."""
    request_left_waiting(app_settings, at=WRITTEN, feature_wait=WAIT)
    engine = engine_of(app_settings)

    def down(record_ids: object) -> set[int]:
        raise ConnectionError("feature store down")

    outcome = ledger.recheck_waiting(
        engine, down, now=WRITTEN + HOUR, feature_wait=WAIT, batch_size=8, limit=10
    )
    assert outcome.lookup_error is not None
    [request] = rows(app_settings, db.prediction_requests)
    assert request.feature_waited_seconds == MAX_STEP.total_seconds()
    # The store answers at the next import's wake-up: the wait is not over, so no dead letter.
    answered = ledger.recheck_waiting(
        engine,
        lambda ids: set(),
        now=WRITTEN + HOUR + TICK,
        feature_wait=WAIT,
        batch_size=8,
        limit=10,
        wake=True,
    )
    assert (answered.still_waiting, answered.dead_lettered) == (1, 0)


def test_waiting_requests_shows_the_rest_of_the_credited_wait(app_settings: Settings) -> None:
    request_left_waiting(app_settings, at=WRITTEN, feature_wait=WAIT)
    stepped = WRITTEN + HOUR
    ledger.recheck_waiting(
        engine_of(app_settings),
        lambda ids: set(),
        now=stepped,
        feature_wait=WAIT,
        batch_size=8,
        limit=10,
    )
    [shown], total = ledger.waiting_requests(engine_of(app_settings), feature_wait=WAIT, limit=5)
    assert total == 1
    assert shown.dead_letter_at == stepped + WAIT - MAX_STEP


def retried_after(
    settings: Settings, first_look: datetime, *, credited: list[float] | None = None
) -> timedelta | None:
    """A batch whose first run was requested at WRITTEN and which Dagster never runs: reconcile
    looks at ``first_look``, then every ``RECHECK_AFTER``; how long after ``first_look`` it was
    retried (None: never within 40 looks). ``credited`` gets the time credited by each look."""
    engine = engine_of(settings)
    [key] = ledger.create_batches(engine, [1], source="test", batch_size=8, now=WRITTEN)
    ledger.count_attempt(engine, [key], now=WRITTEN)
    for look in range(40):
        now = first_look + look * RECHECK_AFTER
        outcome = ledger.reconcile(
            engine,
            lambda batches: {},  # Dagster has no run of it
            max_attempts=settings.max_attempts,
            now=now,
        )
        assert outcome.dead_lettered == []
        if outcome.retried:
            assert outcome.retried == {key: 2}
            return now - first_look
        if credited is not None:
            [batch] = rows(settings, db.prediction_batches)
            credited.append(batch.unrun_seconds)
    return None


def test_without_a_step_a_batch_without_a_run_is_retried_after_stale_after(
    app_settings: Settings,
) -> None:
    assert retried_after(app_settings, WRITTEN + RECHECK_AFTER) == STALE_AFTER - RECHECK_AFTER


@pytest.mark.parametrize(
    ("step", "retried"),
    [
        # Credited 60 s - 1 us, then 10 s a look: 7 looks to reach 2 min.
        (HALF_STALE - TICK, 7 * RECHECK_AFTER),
        (HALF_STALE, 6 * RECHECK_AFTER),
        (HALF_STALE + TICK, 6 * RECHECK_AFTER),  # one past the bound: credited the bound
        (HOUR, 6 * RECHECK_AFTER),  # before: retried at the first look after the step
    ],
    ids=["below-the-bound", "at-the-bound", "one-past", "an-hour"],
)
def test_a_forward_step_retries_a_batch_without_a_run_at_most_the_bound_early(
    app_settings: Settings, step: timedelta, retried: timedelta
) -> None:
    credited: list[float] = []
    assert retried_after(app_settings, WRITTEN + step, credited=credited) == retried
    # The step itself was credited at most half of stale_after (at its first look).
    assert credited[0] == min(step, HALF_STALE).total_seconds()


def test_a_batch_written_before_a_step_back_is_retried_after_stale_after(
    app_settings: Settings,
) -> None:
    """Neither held for the hour of the step nor retried at once: 2 min of observed time."""
    assert retried_after(app_settings, WRITTEN - HOUR) == STALE_AFTER


def test_a_new_run_request_starts_the_unrun_time_again(app_settings: Settings) -> None:
    engine = engine_of(app_settings)
    [key] = ledger.create_batches(engine, [1], source="test", batch_size=8, now=WRITTEN)
    ledger.count_attempt(engine, [key], now=WRITTEN)
    ledger.reconcile(engine, lambda b: {}, max_attempts=3, now=WRITTEN + HOUR)
    [batch] = rows(app_settings, db.prediction_batches)
    assert batch.unrun_seconds == HALF_STALE.total_seconds()
    ledger.count_attempt(engine, [key], now=WRITTEN + HOUR)
    [batch] = rows(app_settings, db.prediction_batches)
    assert (batch.attempts, batch.unrun_seconds) == (2, None)


@pytest.mark.parametrize(
    ("step", "pruned"),
    [(timedelta(0), False), (TICK, True), (HOUR, True)],
    ids=["on-time", "a-microsecond-ahead", "an-hour-ahead"],
)
def test_retention_prunes_settled_batches_early_by_a_forward_step(
    app_settings: Settings, step: timedelta, pruned: bool
) -> None:
    engine = engine_of(app_settings)
    settled, queued = ledger.create_batches(
        engine, [1, 2], source="test", batch_size=1, now=WRITTEN
    )
    ledger.dead_letter_batch(engine, settled, reason="test", now=WRITTEN)
    older_than = timedelta(days=30)
    # A clock ``step`` ahead of WRITTEN + 30 days (``created_at < before`` is strict).
    before = WRITTEN + older_than + step - older_than
    old = ledger.old_settled_batches(engine, before=before, limit=10)
    assert old == ([settled] if pruned else [])
    assert queued not in old  # an unsettled batch, at any step
