"""The ledger's deadlines when the host clock steps back (NTP correcting a clock that ran fast).

Each deadline compares a time the ledger wrote with the clock now. After a step back, times
written before the step lie ahead of the clock; before the fix, the batch closing, a waiting
request's next look-up and the reconcile of a batch whose run never came all waited for the clock
to catch up, for as long as the step. Now a time written further ahead than the deadline's own
length is taken as a stepped clock's, and is due. Each rule is pinned at its bound and one
microsecond past, and a forward step (which only brings a deadline nearer) is checked beside it.
Reconcile's ``stale_after`` and the feature wait are credited gap by gap since: their steps,
back and forward, are pinned in ``test_clock_step_forward.py``. Clocks are injected; both app
databases.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from batchinfer_dagster import db, ledger
from batchinfer_dagster.ledger.closing import BatchClosing
from batchinfer_dagster.ledger.reconcile import RECHECK_AFTER
from batchinfer_dagster.settings import Settings
from batchinfer_testing.deployment import engine_of, rows
from batchinfer_testing.ledger_states import request_left_waiting

WRITTEN = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)  # when the fast clock wrote the ledger
STEP = timedelta(hours=1)
TICK = timedelta(microseconds=1)
WAIT = timedelta(seconds=600)


@pytest.mark.parametrize(
    ("now", "closes"),
    [
        (WRITTEN - STEP, True),  # stepped back an hour
        (WRITTEN - TICK, True),  # one microsecond back: a clock that stepped back
        (WRITTEN, False),  # received now: waits its 30 s
        (WRITTEN + timedelta(seconds=30) - TICK, False),
        (WRITTEN + timedelta(seconds=30), True),
        (WRITTEN + STEP, True),  # stepped forward: closes, as it would 30 s on
    ],
    ids=["back-an-hour", "back-1us", "at-receipt", "before-the-wait", "at-the-wait", "forward"],
)
def test_a_partial_batch_received_after_now_closes_at_once(now: datetime, closes: bool) -> None:
    closing = BatchClosing(max_size=8, max_wait=timedelta(seconds=30))
    assert closing.sizes([WRITTEN, WRITTEN], now) == ([2] if closes else [])
    # Full batches close whatever the clock says.
    assert closing.sizes([WRITTEN] * 9, now) == ([8, 1] if closes else [8])


@pytest.mark.parametrize(
    ("back", "looked_up"),
    [
        (STEP, True),
        (ledger.FEATURE_BACKOFF_MAX + TICK, True),  # one past the longest backoff ahead
        (ledger.FEATURE_BACKOFF_MAX, False),  # the longest backoff ahead: a backoff, not a step
        (TICK, False),  # its 5 s backoff ends a microsecond later
    ],
    ids=["an-hour", "one-past-the-longest-backoff", "the-longest-backoff", "just-before-it-is-due"],
)
def test_a_waiting_request_written_before_a_step_back_is_looked_up(
    app_settings: Settings, back: timedelta, looked_up: bool
) -> None:
    not_before = request_left_waiting(app_settings, at=WRITTEN, feature_wait=WAIT)
    assert not_before == WRITTEN + ledger.FEATURE_BACKOFF_BASE
    now = not_before - back
    looked: list[list[int]] = []

    def lookup(record_ids: object) -> set[int]:
        looked.append(sorted(record_ids))  # type: ignore[call-overload]
        return set()

    outcome = ledger.recheck_waiting(
        engine_of(app_settings), lookup, now=now, feature_wait=WAIT, batch_size=8, limit=10
    )

    assert looked == ([[42]] if looked_up else [])
    assert outcome.still_waiting == (1 if looked_up else 0)
    [request] = rows(app_settings, db.prediction_requests)
    assert request.status == ledger.RequestStatus.WAITING_FEATURES  # never dead-lettered
    if looked_up:  # its next look-up is on the clock as it is now
        assert request.not_before == now + ledger.feature_backoff(1)


@pytest.mark.parametrize(
    ("now", "candidate"),
    [
        (WRITTEN - RECHECK_AFTER - TICK, True),
        (WRITTEN - RECHECK_AFTER, False),
        (WRITTEN + RECHECK_AFTER - TICK, False),
        (WRITTEN + RECHECK_AFTER, True),
    ],
    ids=["back-one-past", "back-at-the-bound", "just-written", "due"],
)
def test_a_batch_written_ahead_of_the_clock_is_looked_at(
    app_settings: Settings, now: datetime, candidate: bool
) -> None:
    engine = engine_of(app_settings)
    [key] = ledger.create_batches(engine, [1], source="test", batch_size=8, now=WRITTEN)
    ledger.count_attempt(engine, [key], now=WRITTEN)

    found = ledger.batches_to_reconcile(engine, now=now, recheck_after=RECHECK_AFTER, limit=10)

    assert [b.batch_key for b in found] == ([key] if candidate else [])
