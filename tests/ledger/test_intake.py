"""Intake: batches, redeliveries, dead letters and re-batching, on both app databases."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from batchinfer_dagster import db, ledger
from batchinfer_dagster.clients.queue import ReceivedMessage
from batchinfer_dagster.partitions import BATCH_KEY_PATTERN
from batchinfer_dagster.settings import Settings
from batchinfer_testing.deployment import engine_of, rows

NOW = datetime(2026, 11, 25, 8, 0, tzinfo=UTC)


def message(message_id: str, data: bytes) -> ReceivedMessage:
    return ReceivedMessage(message_id, f"ack-{message_id}", data, 1, NOW)


def test_ingest_splits_batches_and_ignores_redeliveries(app_settings: Settings) -> None:
    engine = engine_of(app_settings)
    messages = [message(str(i), f'{{"id": {i}}}'.encode()) for i in range(1, 11)]
    first = ledger.ingest_messages(engine, messages, queue="local", batch_size=4, now=NOW)
    assert first.accepted == 10
    assert len(first.batch_keys) == 3
    assert all(BATCH_KEY_PATTERN.match(key) for key in first.batch_keys)
    sizes = [
        len(rows(app_settings, db.prediction_requests, db.prediction_requests.c.batch_key == k))
        for k in first.batch_keys
    ]
    assert sizes == [4, 4, 2]

    again = ledger.ingest_messages(
        engine, [*messages[:3], message("99", b"{}")], queue="local", batch_size=4, now=NOW
    )
    assert (again.accepted, again.redelivered, again.dead_lettered) == (0, 3, 1)
    assert again.batch_keys == []
    assert len(rows(app_settings, db.prediction_requests)) == 10
    assert len(again.ack_ids) == 4


def test_same_id_with_another_publish_time_is_a_new_message(app_settings: Settings) -> None:
    """SQLite reuses a drained queue's rowids: a new message must not pass for a redelivery."""
    engine = engine_of(app_settings)
    first = message("1", b'{"id": 1}')
    reused = ReceivedMessage("1", "ack-2", b'{"id": 2}', 1, NOW + timedelta(seconds=3))
    ledger.ingest_messages(engine, [first], queue="local", batch_size=4, now=NOW)
    result = ledger.ingest_messages(engine, [reused], queue="local", batch_size=4, now=NOW)
    assert result.accepted == 1
    assert sorted(r.record_id for r in rows(app_settings, db.prediction_requests)) == [1, 2]


def test_malformed_message_dead_lettered_once_across_redeliveries(app_settings: Settings) -> None:
    engine = engine_of(app_settings)
    bad = message("5", b'{"id": "abc"}')
    for _ in range(2):
        ledger.ingest_messages(engine, [bad], queue="local", batch_size=4, now=NOW)
    letters = rows(app_settings, db.dead_letters)
    assert [(r.payload, r.reason) for r in letters] == [
        ('{"id": "abc"}', "id 'abc' is not a positive integer")
    ]


def test_rebatch_waiting_only_after_backoff(app_settings: Settings) -> None:
    engine = engine_of(app_settings)
    result = ledger.ingest_messages(
        engine, [message("1", b'{"id": 1}')], queue="local", batch_size=4, now=NOW
    )
    table = db.prediction_requests
    with engine.begin() as connection:
        connection.execute(
            table.update().values(
                status=ledger.RequestStatus.WAITING_FEATURES, not_before=NOW + timedelta(seconds=10)
            )
        )
    assert ledger.rebatch_waiting(engine, now=NOW, batch_size=4, limit=100) == []
    keys = ledger.rebatch_waiting(engine, now=NOW + timedelta(seconds=10), batch_size=4, limit=100)
    assert len(keys) == 1
    assert keys != result.batch_keys
    (request,) = rows(app_settings, table)
    assert (request.batch_key, request.status) == (keys[0], ledger.RequestStatus.QUEUED)
