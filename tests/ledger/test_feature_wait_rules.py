"""The feature wait's look-ups (``ledger.feature_wait``), each rule beside the case it must not
touch: which waiting requests are due (the step-back rule at ``FEATURE_BACKOFF_MAX`` and one
past), what the feature store is asked, what a failed look-up leaves on each request, and when
``waiting_requests`` says a request will be dead-lettered.

Fast tier (SQLite; PostgreSQL too under ``make test``); clocks injected.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from batchinfer_dagster import db, ledger
from batchinfer_dagster.ledger.dead_letters import MAX_ERROR_CHARS
from batchinfer_dagster.settings import Settings
from batchinfer_testing.deployment import engine_of, rows

NOW = datetime(2026, 12, 5, 9, 0, tzinfo=UTC)
TICK = timedelta(microseconds=1)
WAIT = timedelta(hours=1)
R = ledger.RequestStatus


def waiting(engine: sa.Engine, record_id: int, **values: object) -> None:
    """The request of ``record_id`` made to wait for features with ``values``."""
    table = db.prediction_requests
    with engine.begin() as connection:
        connection.execute(
            table.update()
            .where(table.c.record_id == record_id)
            .values(status=R.WAITING_FEATURES, **values)
        )


def request_of(settings: Settings, record_id: int) -> sa.Row:
    [row] = rows(settings, db.prediction_requests, db.prediction_requests.c.record_id == record_id)
    return row


class Lookup:
    """A feature store that holds ``present``; records what it was asked."""

    def __init__(self, present: set[int]) -> None:
        self.present = present
        self.asked: list[list[int]] = []

    def __call__(self, record_ids: object) -> set[int]:
        asked = list(record_ids)  # type: ignore[call-overload]
        self.asked.append(asked)
        return self.present & set(asked)


def recheck(settings: Settings, lookup: Lookup, *, now: datetime = NOW, **kwargs: object):
    options = {"feature_wait": WAIT, "batch_size": 8, "limit": 10, **kwargs}
    return ledger.recheck_waiting(engine_of(settings), lookup, now=now, **options)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("ahead", "due"),
    [
        (timedelta(0), True),  # due now
        (TICK, False),  # a microsecond ahead: a backoff
        (ledger.FEATURE_BACKOFF_MAX, False),  # the longest backoff ahead: still a backoff
        (ledger.FEATURE_BACKOFF_MAX + TICK, True),  # further: written before a step back
    ],
    ids=["now", "1us-ahead", "the-longest-backoff", "one-past-it"],
)
def test_a_request_is_due_at_its_time_or_when_written_past_any_backoff(
    app_settings: Settings, ahead: timedelta, due: bool
) -> None:
    engine = engine_of(app_settings)
    ledger.create_batches(engine, [1], source="t", batch_size=8, now=NOW)
    waiting(engine, 1, not_before=NOW + ahead)
    lookup = Lookup(set())
    outcome = recheck(app_settings, lookup)
    assert lookup.asked == ([[1]] if due else [])
    assert outcome.still_waiting == (1 if due else 0)
    woken = recheck(app_settings, lookup, wake=True)  # an import wakes it whatever its time
    assert woken.still_waiting == 1


def test_the_store_is_asked_once_for_the_distinct_ids_in_order(app_settings: Settings) -> None:
    engine = engine_of(app_settings)
    ledger.create_batches(engine, [7, 3, 7, 5], source="t", batch_size=8, now=NOW)
    table = db.prediction_requests
    with engine.begin() as connection:
        connection.execute(table.update().values(status=R.WAITING_FEATURES, not_before=NOW))
    lookup = Lookup({3, 7})
    later = NOW + timedelta(minutes=1)
    outcome = recheck(app_settings, lookup, now=later, batch_size=2)
    assert lookup.asked == [[3, 5, 7]]
    assert (outcome.still_waiting, outcome.dead_lettered, len(outcome.batch_keys)) == (1, 0, 2)
    queued = rows(app_settings, table, table.c.status == R.QUEUED)
    assert sorted(row.record_id for row in queued) == [3, 7, 7]
    assert {row.batch_key for row in queued} == set(outcome.batch_keys)
    assert {row.updated_at for row in queued} == {later}
    assert request_of(app_settings, 5).status == R.WAITING_FEATURES


def test_nothing_due_asks_nothing(app_settings: Settings) -> None:
    engine = engine_of(app_settings)
    ledger.create_batches(engine, [1], source="t", batch_size=8, now=NOW)
    lookup = Lookup({1})
    assert recheck(app_settings, lookup, wake=True) == ledger.RecheckOutcome()
    assert ledger.RecheckOutcome() == ledger.RecheckOutcome([], 0, 0, None)
    assert lookup.asked == []  # a queued request is not waiting


def test_a_failed_lookup_is_written_on_the_waiting_requests_only(app_settings: Settings) -> None:
    engine = engine_of(app_settings)
    ledger.create_batches(engine, [1, 2], source="t", batch_size=8, now=NOW)
    waiting(engine, 1, not_before=NOW, attempts=2, feature_waited_seconds=30.0, updated_at=NOW)
    later = NOW + timedelta(seconds=50)

    def down(record_ids: object) -> set[int]:
        raise ConnectionError("store down")

    outcome = ledger.recheck_waiting(
        engine, down, now=later, feature_wait=WAIT, batch_size=8, limit=10
    )

    error = "looking up 1 waiting requests in the feature store failed: store down"
    assert outcome == ledger.RecheckOutcome(still_waiting=1, lookup_error=error)
    failed = request_of(app_settings, 1)
    assert (failed.status, failed.attempts, failed.error) == (R.WAITING_FEATURES, 3, error)
    assert failed.not_before == later + ledger.feature_backoff(2)
    assert failed.feature_waited_seconds == 80.0  # 30 credited + the 50 s gap
    assert failed.updated_at == later
    other = request_of(app_settings, 2)
    assert (other.status, other.attempts, other.error) == (R.QUEUED, 0, None)
    assert rows(app_settings, db.dead_letters) == []
    assert len(error) <= MAX_ERROR_CHARS


def test_dead_letter_at_counts_the_credited_wait_from_the_last_look(
    app_settings: Settings,
) -> None:
    """Credited 100 s at a look 10 min after receipt: dead-lettered WAIT - 100 s after that
    look, not WAIT after receipt."""
    engine = engine_of(app_settings)
    ledger.create_batches(engine, [1, 2], source="t", batch_size=8, now=NOW)
    look = NOW + timedelta(minutes=10)
    waiting(
        engine, 1, received_at=NOW, updated_at=look, feature_waited_seconds=100.0, not_before=look
    )
    waiting(engine, 2, received_at=NOW + TICK, updated_at=look, not_before=None)
    shown, total = ledger.waiting_requests(engine, feature_wait=WAIT, limit=5)
    assert total == 2
    assert [w.record_id for w in shown] == [1, 2]
    assert shown[0].dead_letter_at == look + WAIT - timedelta(seconds=100)
    assert shown[1].dead_letter_at == NOW + TICK + WAIT  # never looked up: from receipt
    assert shown[0].reason == ledger.WAITING_REASON == "record not in the feature store yet"
    assert ledger.waiting_requests(engine, feature_wait=WAIT, limit=1)[0] == shown[:1]


def test_waiting_requests_received_together_are_shown_by_message_id(
    app_settings: Settings,
) -> None:
    """Ids given against the rows' insertion order: a tie on receipt is broken by the id, not
    by where the database happens to keep the rows."""
    engine = engine_of(app_settings)
    ledger.create_batches(engine, [1, 2, 3], source="t", batch_size=8, now=NOW)
    for record_id, message_id in ((1, "m-z"), (2, "m-m"), (3, "m-a")):
        waiting(engine, record_id, message_id=message_id, received_at=NOW, not_before=NOW)
    shown, total = ledger.waiting_requests(engine, feature_wait=WAIT, limit=2)
    assert total == 3
    assert [w.message_id for w in shown] == ["m-a", "m-m"]


@pytest.mark.parametrize(
    ("store_answers", "moved_to", "feature_wait"),
    [
        (None, R.DONE, WAIT),
        ({1}, R.DONE, WAIT),
        (set(), R.DONE, WAIT),
        (set(), R.DONE, timedelta(seconds=1)),
        (set(), R.DEAD_LETTERED, WAIT),
    ],
    ids=["look-up-fails", "record-arrived", "still-missing", "wait-over", "dead-lettered"],
)
def test_a_request_that_moved_on_during_the_lookup_is_left_alone(
    app_settings: Settings, store_answers: set[int] | None, moved_to: str, feature_wait: timedelta
) -> None:
    """The store is asked outside the ledger's transaction: meanwhile the request moved on (a
    re-materialization predicted it; an overlapping look-up ended its wait). Neither a failed
    look-up, a found record nor a missing one may write over that: not waiting again, and not
    a dead letter "unknown record id" for a request that was predicted (the state machine lets
    a re-materialization make a done request either, so the updates' guards alone did not)."""
    engine = engine_of(app_settings)
    ledger.create_batches(engine, [1], source="t", batch_size=8, now=NOW)
    waiting(engine, 1, not_before=NOW, attempts=1, feature_waited_seconds=5.0, updated_at=NOW)
    table = db.prediction_requests

    def lookup(record_ids: object) -> set[int]:
        with engine.begin() as connection:
            connection.execute(table.update().values(status=moved_to))
        if store_answers is None:
            raise ConnectionError("store down")
        return store_answers

    outcome = ledger.recheck_waiting(
        engine,
        lookup,
        now=NOW + timedelta(seconds=10),
        feature_wait=feature_wait,
        batch_size=8,
        limit=10,
    )

    row = request_of(app_settings, 1)
    assert (row.status, row.attempts, row.error, row.updated_at) == (moved_to, 1, None, NOW)
    assert rows(app_settings, db.dead_letters) == []
    if store_answers is not None:
        assert (outcome.still_waiting, outcome.dead_lettered) == (0, 0)


@pytest.mark.parametrize(
    ("feature_wait", "next_lookup"),
    [
        (WAIT, ledger.feature_backoff(3)),  # the backoff: 40 s
        (timedelta(seconds=100), timedelta(seconds=20)),  # the rest of the wait is shorter
    ],
    ids=["backoff", "rest-of-the-wait"],
)
def test_a_record_still_missing_is_credited_and_looked_up_again(
    app_settings: Settings, feature_wait: timedelta, next_lookup: timedelta
) -> None:
    """Credited 30 s before, looked up 50 s after the last write: 80 s credited, attempts + 1,
    the next look-up after its backoff or at the end of the wait, whichever comes first."""
    engine = engine_of(app_settings)
    ledger.create_batches(engine, [1], source="t", batch_size=8, now=NOW)
    waiting(engine, 1, not_before=NOW, attempts=3, feature_waited_seconds=30.0, updated_at=NOW)
    later = NOW + timedelta(seconds=50)
    outcome = recheck(app_settings, Lookup(set()), now=later, feature_wait=feature_wait)
    assert (outcome.still_waiting, outcome.dead_lettered) == (1, 0)
    row = request_of(app_settings, 1)
    assert (row.status, row.attempts, row.feature_waited_seconds) == (R.WAITING_FEATURES, 4, 80.0)
    assert (row.not_before, row.updated_at) == (later + next_lookup, later)
