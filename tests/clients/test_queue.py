"""The queue contract, on the SQL-table queue (SQLite, PostgreSQL) and the Pub/Sub emulator."""

from __future__ import annotations

import time

import pytest
import sqlalchemy as sa

from batchinfer_dagster import db, ledger
from batchinfer_dagster.settings import Settings
from batchinfer_testing.deployment import drain, engine_of, open_queue


def test_publish_pull_ack_roundtrip(queue_settings: Settings) -> None:
    queue = open_queue(queue_settings)
    payloads = [b'{"id": "1"}', b'{"id": 2}', b"not json at all", "é ✓".encode()]
    ids = queue.publish(payloads)
    assert len(set(ids)) == 4

    got = drain(queue, 4)
    assert sorted(m.data for m in got) == sorted(payloads)
    assert {m.message_id for m in got} == set(ids)
    assert all(m.delivery_attempt == 1 for m in got)

    queue.ack([m.ack_id for m in got])
    assert queue.pull(max_messages=10, timeout=1) == []


def test_pull_returns_at_most_max_messages(queue_settings: Settings) -> None:
    queue = open_queue(queue_settings)
    queue.publish([f'{{"id": {i}}}'.encode() for i in range(1, 31)])
    first = queue.pull(max_messages=10, timeout=5)
    assert 1 <= len(first) <= 10
    rest = drain(queue, 30 - len(first))
    assert len({m.message_id for m in first + rest}) == 30


def test_unacked_message_is_redelivered_after_the_deadline(queue_settings: Settings) -> None:
    assert queue_settings.ack_deadline_seconds == 10  # Pub/Sub's shortest; the fixture sets it
    queue = open_queue(queue_settings)
    [message_id] = queue.publish([b'{"id": "7"}'])
    [first] = drain(queue, 1)
    assert first.message_id == message_id
    assert queue.pull(max_messages=1, timeout=2) == []  # leased, invisible

    again = drain(queue, 1, timeout=40)
    assert [m.message_id for m in again] == [message_id]
    assert again[0].ack_id != first.ack_id
    assert again[0].delivery_attempt >= 2
    queue.ack([again[0].ack_id])


def test_nacked_message_becomes_dead_letter_after_max_attempts(queue_settings: Settings) -> None:
    queue = open_queue(queue_settings)
    queue.publish([b'{"id": "poison"}'])
    attempts = []
    for _ in range(queue_settings.max_delivery_attempts):
        [delivery] = drain(queue, 1)
        attempts.append(delivery.delivery_attempt)
        queue.nack([delivery.ack_id])
    assert attempts == list(range(1, queue_settings.max_delivery_attempts + 1))

    assert drain(queue, 1, timeout=8) == []
    # Both queues hand the dead letter back the same way; the ledger alone writes it down.
    dead: list = []
    deadline = time.monotonic() + 30
    while not dead and time.monotonic() < deadline:
        dead = queue.pull_dead_letters(10, 2)
    assert [m.data for m in dead] == [b'{"id": "poison"}']
    assert dead[0].delivery_attempt == queue_settings.max_delivery_attempts
    engine = engine_of(queue_settings)
    assert ledger.record_queue_dead_letters(engine, dead, queue=queue.kind, now=db.utcnow()) == 1
    queue.ack_dead_letters([m.ack_id for m in dead])
    with engine.connect() as connection:
        rows = connection.execute(sa.select(db.dead_letters)).all()
    source = "queue" if queue_settings.queue == "local" else "pubsub-dead-letter"
    assert [(r.source, r.payload) for r in rows] == [(source, '{"id": "poison"}')]
    assert f"{queue_settings.max_delivery_attempts} deliver" in rows[0].reason
    assert queue.pull_dead_letters(10, 1) == []  # acked: gone


@pytest.mark.parametrize("count", [2500])
def test_large_publish_and_ack_in_chunks(queue_settings: Settings, count: int) -> None:
    queue = open_queue(queue_settings)
    ids = queue.publish([f'{{"id": {i}}}'.encode() for i in range(count)])
    assert len(ids) == count
    got = drain(queue, count, timeout=60)
    assert len({m.message_id for m in got}) == count
    queue.ack([m.ack_id for m in got])
    assert queue.pull(max_messages=10, timeout=1) == []


def test_message_ids_are_never_reused(queue_settings: Settings) -> None:
    queue = open_queue(queue_settings)
    first = queue.publish([b'{"id": 1}'])
    queue.ack([m.ack_id for m in drain(queue, 1)])
    second = queue.publish([b'{"id": 1}'])
    assert second != first  # a drained queue does not hand out the same id again
