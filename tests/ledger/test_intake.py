"""Intake: batches, redeliveries, dead letters and re-batching, on both app databases."""

from __future__ import annotations

import functools
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa

from batchinfer_dagster import db, ledger
from batchinfer_dagster.clients.queue import ReceivedMessage
from batchinfer_dagster.ledger.batch_keys import BATCH_KEY_PATTERN
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


def wait_for_features(
    engine: sa.Engine, not_before: datetime, *, waited: timedelta | None = None
) -> None:
    """Every request waiting for features, next looked up at ``not_before``; ``waited``: the
    part of the wait served by look-ups before, the last of them at ``not_before - 60 s``."""
    table = db.prediction_requests
    values: dict[str, object] = {}
    if waited is not None:
        values = {
            "feature_waited_seconds": waited.total_seconds(),
            "updated_at": not_before - ledger.FEATURE_BACKOFF_MAX,
        }
    with engine.begin() as connection:
        connection.execute(
            table.update().values(
                status=ledger.RequestStatus.WAITING_FEATURES,
                not_before=not_before,
                attempts=1,
                **values,
            )
        )


def test_recheck_waiting_batches_only_records_that_arrived_after_backoff(
    app_settings: Settings,
) -> None:
    engine = engine_of(app_settings)
    messages = [message("1", b'{"id": 1}'), message("2", b'{"id": 2}')]
    result = ledger.ingest_messages(engine, messages, queue="local", batch_size=4, now=NOW)
    wait_for_features(engine, NOW + timedelta(seconds=10))
    looked_up: list[list[int]] = []

    def lookup(record_ids: list[int]) -> set[int]:
        looked_up.append(list(record_ids))
        return {1}  # record 1 arrived in the feature store, record 2 did not

    recheck = functools.partial(
        ledger.recheck_waiting,
        engine,
        lookup,
        feature_wait=timedelta(seconds=600),
        batch_size=4,
        limit=100,
    )
    assert recheck(now=NOW + timedelta(seconds=9)) == ledger.RecheckOutcome()
    assert looked_up == []  # not due: not even looked up

    due = NOW + timedelta(seconds=10)
    outcome = recheck(now=due)
    assert looked_up == [[1, 2]]
    assert (len(outcome.batch_keys), outcome.still_waiting, outcome.dead_lettered) == (1, 1, 0)
    assert outcome.batch_keys != result.batch_keys
    first, second = sorted(rows(app_settings, db.prediction_requests), key=lambda r: r.record_id)
    assert (first.batch_key, first.status) == (outcome.batch_keys[0], ledger.RequestStatus.QUEUED)
    # Still missing: no batch, its backoff moved on (attempt 2: 10 s).
    assert second.batch_key == result.batch_keys[0]
    assert (second.status, second.attempts) == (ledger.RequestStatus.WAITING_FEATURES, 2)
    assert second.not_before == due + ledger.feature_backoff(1)
    assert len(rows(app_settings, db.prediction_batches)) == 2  # the first and the one re-batch


def test_recheck_waiting_wakes_on_an_import_and_dead_letters_after_the_wait(
    app_settings: Settings,
) -> None:
    engine = engine_of(app_settings)
    ledger.ingest_messages(
        engine, [message("1", b'{"id": 1}')], queue="local", batch_size=4, now=NOW
    )
    wait_for_features(engine, NOW + timedelta(seconds=60))

    def recheck(now: datetime, *, wake: bool) -> ledger.RecheckOutcome:
        return ledger.recheck_waiting(
            engine,
            lambda ids: set(),
            now=now,
            feature_wait=timedelta(seconds=600),
            batch_size=4,
            limit=100,
            wake=wake,
        )

    assert recheck(NOW + timedelta(seconds=1), wake=False).still_waiting == 0  # not due
    assert recheck(NOW + timedelta(seconds=1), wake=True).still_waiting == 1  # an import woke it
    # 540 s of the wait served by look-ups up to NOW + 540 s: its last one ends it at NOW + 600 s.
    wait_for_features(engine, NOW + timedelta(seconds=600), waited=timedelta(seconds=540))
    late = recheck(NOW + timedelta(seconds=600), wake=False)
    assert (late.batch_keys, late.still_waiting, late.dead_lettered) == ([], 0, 1)
    [letter] = rows(app_settings, db.dead_letters)
    assert (letter.reason, letter.record_id) == (ledger.UNKNOWN_RECORD, 1)
