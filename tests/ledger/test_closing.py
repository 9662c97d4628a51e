"""The batch closing rule: at its size, when the pull drained the queue, or when its oldest
request has waited ``max_wait``.

The rule alone with an injected clock (deadline, either side; sizes at the limit and one past;
a drained pull, and a full one), then through intake on both app databases: a pull that drains
the queue closes its rest at once, a full pull keeps it pending, a backlog closes full batches
only, oldest first.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from batchinfer_dagster import db, ledger
from batchinfer_dagster.clients.queue import ReceivedMessage
from batchinfer_dagster.ledger import BatchClosing
from batchinfer_dagster.settings import Settings
from batchinfer_testing.deployment import engine_of

NOW = datetime(2026, 11, 25, 8, 0, tzinfo=UTC)
WAIT = timedelta(seconds=15)
TICK = timedelta(microseconds=1)
CLOSING = BatchClosing(max_size=4, max_wait=WAIT)


@pytest.mark.parametrize(
    ("waited", "closes"),
    [(WAIT - TICK, False), (WAIT, True), (WAIT + TICK, True)],
    ids=["just-before-deadline", "at-deadline", "just-after-deadline"],
)
def test_a_partial_batch_closes_at_its_deadline(waited: timedelta, closes: bool) -> None:
    received = [NOW, NOW + timedelta(seconds=1)]

    sizes = CLOSING.sizes(received, NOW + waited)

    assert sizes == ([2] if closes else [])


@pytest.mark.parametrize(
    ("pending", "sizes"),
    [(3, []), (4, [4]), (5, [4]), (8, [4, 4]), (9, [4, 4])],
    ids=["one-under", "at-size", "one-past", "twice", "twice-and-one"],
)
def test_full_batches_close_without_waiting(pending: int, sizes: list[int]) -> None:
    received = [NOW] * pending

    assert CLOSING.sizes(received, NOW) == sizes


def test_the_rest_closes_by_the_age_of_its_own_oldest_request() -> None:
    """The first full batch takes the 4 oldest; the 5th's own wait decides the rest."""
    received = [NOW - WAIT] * 4 + [NOW - WAIT + TICK]

    assert CLOSING.sizes(received, NOW) == [4]
    assert CLOSING.sizes(received, NOW + TICK) == [4, 1]


@pytest.mark.parametrize(
    ("pending", "sizes"),
    [(1, [1]), (3, [3]), (4, [4]), (5, [4, 1])],
    ids=["lone", "one-under", "at-size", "one-past"],
)
def test_a_drained_pull_closes_its_rest_at_once(pending: int, sizes: list[int]) -> None:
    """Nothing has waited at all, yet nothing more is coming: no reason to hold the rest."""
    assert CLOSING.sizes([NOW] * pending, NOW, drained=True) == sizes


def test_a_full_pull_keeps_its_rest_for_the_backlog_behind_it() -> None:
    received = [NOW] * 5

    assert CLOSING.sizes(received, NOW, drained=False) == [4]
    assert CLOSING.sizes(received, NOW + WAIT, drained=False) == [4, 1]


def test_zero_wait_closes_every_pull_at_once() -> None:
    assert BatchClosing(max_size=4, max_wait=timedelta(0)).sizes([NOW] * 6, NOW) == [4, 2]


def test_bounds_are_checked() -> None:
    with pytest.raises(ValueError, match="batch size 0"):
        BatchClosing(max_size=0, max_wait=WAIT)
    with pytest.raises(ValueError, match="must not be negative"):
        BatchClosing(max_size=1, max_wait=-TICK)


def pull(first: int, count: int) -> list[ReceivedMessage]:
    return [
        ReceivedMessage(str(i), f"ack-{i}", f'{{"id": {i}}}'.encode(), 1, NOW)
        for i in range(first, first + count)
    ]


def batch_of(settings: Settings) -> dict[int, str | None]:
    table = db.prediction_requests
    with engine_of(settings).connect() as connection:
        found = connection.execute(sa.select(table.c.record_id, table.c.batch_key))
        return {row.record_id: row.batch_key for row in found}


def test_a_trickle_waits_for_its_deadline_then_closes(app_settings: Settings) -> None:
    engine = engine_of(app_settings)
    first = ledger.ingest_messages(
        engine, pull(1, 2), queue="local", batch_size=4, max_wait=WAIT, now=NOW
    )
    assert (first.accepted, first.batch_keys, first.pending) == (2, [], 2)
    assert set(batch_of(app_settings).values()) == {None}
    later = NOW + timedelta(seconds=5)
    second = ledger.ingest_messages(
        engine, pull(3, 1), queue="local", batch_size=4, max_wait=WAIT, now=later
    )
    assert (second.batch_keys, second.pending) == ([], 3)
    empty_just_before = ledger.ingest_messages(
        engine, [], queue="local", batch_size=4, max_wait=WAIT, now=NOW + WAIT - TICK
    )
    assert empty_just_before.batch_keys == []

    at_deadline = ledger.ingest_messages(
        engine, [], queue="local", batch_size=4, max_wait=WAIT, now=NOW + WAIT
    )

    (key,) = at_deadline.batch_keys
    assert at_deadline.pending == 0
    assert batch_of(app_settings) == {1: key, 2: key, 3: key}


def test_a_pull_that_drains_the_queue_closes_a_lone_request_at_once(
    app_settings: Settings,
) -> None:
    """The lone publish of the walkthrough: in a batch on the tick that pulled it."""
    engine = engine_of(app_settings)

    result = ledger.ingest_messages(
        engine, pull(1, 1), queue="local", batch_size=4, max_wait=WAIT, drained=True, now=NOW
    )

    (key,) = result.batch_keys
    assert result.pending == 0
    assert batch_of(app_settings) == {1: key}


def test_a_full_pull_keeps_its_rest_pending_until_a_pull_drains_the_queue(
    app_settings: Settings,
) -> None:
    """A backlog: the 6-message pull was full, so its 2 left over wait; the next pull (2, not
    full) tops them up and, having drained the queue, closes them with it."""
    engine = engine_of(app_settings)
    full = ledger.ingest_messages(
        engine, pull(1, 6), queue="local", batch_size=4, max_wait=WAIT, drained=False, now=NOW
    )
    assert (len(full.batch_keys), full.pending) == (1, 2)

    last = ledger.ingest_messages(
        engine,
        pull(7, 1),
        queue="local",
        batch_size=4,
        max_wait=WAIT,
        drained=True,
        now=NOW + timedelta(seconds=1),
    )

    (key,) = last.batch_keys
    assert last.pending == 0
    batches = batch_of(app_settings)
    assert batches[5] == batches[6] == batches[7] == key


def test_a_backlog_closes_full_batches_oldest_first(app_settings: Settings) -> None:
    engine = engine_of(app_settings)
    first = ledger.ingest_messages(
        engine, pull(1, 6), queue="local", batch_size=4, max_wait=WAIT, now=NOW
    )
    assert (len(first.batch_keys), first.pending) == (1, 2)
    second = ledger.ingest_messages(
        engine,
        pull(7, 6),
        queue="local",
        batch_size=4,
        max_wait=WAIT,
        now=NOW + timedelta(seconds=5),
    )

    assert (len(second.batch_keys), second.pending) == (2, 0)
    batches = batch_of(app_settings)
    # Records 5 and 6 waited from the first pull: they lead the second pull's first batch.
    assert batches[5] == batches[6] == batches[7] == batches[8] == second.batch_keys[0]
    assert {batches[i] for i in range(9, 13)} == {second.batch_keys[1]}
    assert batches[1] == batches[4] == first.batch_keys[0]


def test_a_redelivered_pending_request_is_not_a_second_request(app_settings: Settings) -> None:
    engine = engine_of(app_settings)
    ledger.ingest_messages(engine, pull(1, 1), queue="local", batch_size=4, max_wait=WAIT, now=NOW)

    again = ledger.ingest_messages(
        engine, pull(1, 1), queue="local", batch_size=4, max_wait=WAIT, now=NOW + WAIT
    )

    assert (again.accepted, again.redelivered, len(again.batch_keys)) == (0, 1, 1)
    assert len(batch_of(app_settings)) == 1
