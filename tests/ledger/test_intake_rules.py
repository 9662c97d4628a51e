"""Intake's rules with data that tells them apart: pending requests closed oldest first (ties
by message id, inserted against their sort order), a redelivery resumed only while its batch is
queued, a broken message that costs only itself, launchpad batches requested once each.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from batchinfer_dagster import db, ledger
from batchinfer_dagster.clients.queue import ReceivedMessage
from batchinfer_dagster.settings import Settings
from batchinfer_testing.deployment import engine_of, rows

NOW = datetime(2026, 12, 5, 9, 0, tzinfo=UTC)
WAIT = timedelta(minutes=1)
R = ledger.RequestStatus
B = ledger.BatchStatus


def message(message_id: str, record_id: int, **kw: object) -> ReceivedMessage:
    values: dict[str, object] = {
        "message_id": message_id,
        "ack_id": f"ack-{message_id}",
        "data": ledger.request_payload(record_id),
        "delivery_attempt": 1,
        "publish_time": NOW,
    }
    values.update(kw)
    return ReceivedMessage(**values)  # type: ignore[arg-type]


def requests_by_record(settings: Settings) -> dict[int, sa.Row]:
    return {row.record_id: row for row in rows(settings, db.prediction_requests)}


def ingest(
    engine: sa.Engine, pull: list[ReceivedMessage], now: datetime, **kw: object
) -> ledger.IngestResult:
    values: dict[str, object] = {"queue": "local", "batch_size": 10, "max_wait": WAIT}
    values.update(kw)
    return ledger.ingest_messages(engine, pull, now=now, **values)  # type: ignore[arg-type]


def test_pending_requests_close_oldest_first_then_by_message_id(app_settings: Settings) -> None:
    """Pulled as z (first), then b and a together: they close z, a, b, one per batch, each
    stamped with the tick that closed it."""
    engine = engine_of(app_settings)
    assert ingest(engine, [message("z", 1)], NOW).pending == 1
    later = NOW + timedelta(seconds=10)
    assert ingest(engine, [message("b", 2), message("a", 3)], later).pending == 3

    closing = NOW + WAIT
    result = ingest(engine, [], closing, batch_size=1)

    assert result.pending == 0
    requests = requests_by_record(app_settings)
    assert [requests[r].batch_key for r in (1, 3, 2)] == result.batch_keys
    assert {requests[r].updated_at for r in (1, 2, 3)} == {closing}
    assert [requests[r].received_at for r in (1, 3, 2)] == [NOW, later, later]


def test_pending_requests_split_into_their_own_batches(app_settings: Settings) -> None:
    """Three pending requests closing as a batch of 2 and one of 1: each update takes only its
    own messages."""
    engine = engine_of(app_settings)
    ingest(engine, [message("m1", 1), message("m2", 2), message("m3", 3)], NOW)

    result = ingest(engine, [], NOW, batch_size=2, drained=True)

    first, second = result.batch_keys
    requests = requests_by_record(app_settings)
    assert [requests[r].batch_key for r in (1, 2, 3)] == [first, first, second]
    assert {requests[r].attempts for r in (1, 2, 3)} == {0}


def test_a_redelivery_resumes_its_batch_only_while_that_batch_is_queued(
    app_settings: Settings,
) -> None:
    engine = engine_of(app_settings)
    first = ingest(engine, [message("a", 1)], NOW, drained=True)
    second = ingest(engine, [message("b", 2)], NOW, drained=True)
    ingest(engine, [message("c", 3)], NOW, drained=True)  # queued, not redelivered
    (queued,), (running,) = first.batch_keys, second.batch_keys
    ledger.start_batch(engine, running, run_id="r", now=NOW)
    ledger.count_attempt(engine, [queued], now=NOW)  # its second attempt, still queued

    again = ingest(engine, [message("a", 1), message("b", 2), message("d", 4)], NOW, drained=True)

    assert again.resumed == {queued: 2}
    assert (again.accepted, again.redelivered, again.pending) == (1, 2, 0)
    assert len(again.batch_keys) == 1


def test_a_message_that_cannot_be_read_costs_only_itself(app_settings: Settings) -> None:
    """A message whose key cannot be made (no publish time) is dead-lettered under a key of at
    most 128 characters; a duplicate in the same pull counts once; the rest of the pull goes on."""
    engine = engine_of(app_settings)
    broken = message("x", 1, publish_time=None, ack_id="k" * 200)
    pull = [
        broken,
        message("a", 2),
        message("a", 2),
        message("bad", 3, data=b"[]"),
        message("c", 4),
    ]

    result = ingest(engine, pull, NOW, drained=True)

    assert (result.accepted, result.dead_lettered, len(result.ack_ids)) == (2, 2, 5)
    letters = {row.message_id: row for row in rows(app_settings, db.dead_letters)}
    unreadable = next(key for key in letters if "unreadable" in key)
    assert unreadable == ("local:unreadable:0:" + "k" * 200)[:128]
    assert letters[unreadable].reason.startswith(
        "could not read the message: AttributeError: 'NoneType' object"
    )
    requests = requests_by_record(app_settings)
    assert sorted(requests) == [2, 4]
    assert requests[2].message_id == f"local:a:{round(NOW.timestamp() * 1_000_000)}"
    assert requests[2].attempts == 0


def test_launchpad_batches_take_ids_1_to_2_63_minus_1_under_their_source(
    app_settings: Settings,
) -> None:
    engine = engine_of(app_settings)
    keys = ledger.create_batches(
        engine, [1, ledger.MAX_RECORD_ID], source="launchpad", batch_size=1, now=NOW
    )
    requests = requests_by_record(app_settings)
    assert [requests[r].batch_key for r in (1, ledger.MAX_RECORD_ID)] == keys
    assert all(row.message_id.startswith("launchpad:") for row in requests.values())
    assert {row.attempts for row in requests.values()} == {0}
    for bad in (0, ledger.MAX_RECORD_ID + 1):
        with pytest.raises(
            ledger.InvalidRequestError, match=f"^record id {bad} is not a positive integer$"
        ):
            ledger.create_batches(engine, [bad], source="launchpad", batch_size=1, now=NOW)


def test_new_batches_are_requested_once_lowest_key_first_up_to_the_limit(
    app_settings: Settings,
) -> None:
    engine = engine_of(app_settings)
    late, middle, early = (
        ledger.create_batches(engine, [i], source="t", batch_size=1, now=NOW + timedelta(hours=i))[
            0
        ]
        for i in (3, 2, 1)  # written latest first
    )
    given_up = ledger.create_batches(engine, [9], source="t", batch_size=1, now=NOW)[0]
    ledger.dead_letter_batch(engine, given_up, reason="gone", now=NOW)
    later = NOW + timedelta(hours=5)

    assert ledger.request_new_batches(engine, now=later, limit=2) == {early: 1, middle: 1}
    assert ledger.request_new_batches(engine, now=later, limit=2) == {late: 1}
    assert ledger.request_new_batches(engine, now=later, limit=2) == {}
    statuses = {
        row.batch_key: (row.status, row.attempts)
        for row in rows(app_settings, db.prediction_batches)
    }
    assert statuses[given_up] == (B.DEAD_LETTERED, 0)
    assert statuses[early] == (B.QUEUED, 1)
