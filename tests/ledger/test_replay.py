"""Replay publishes through the callable it is given: the ledger knows no queue client."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import pytest

from batchinfer_dagster import db, ledger
from batchinfer_dagster.clients.queue import ReceivedMessage
from batchinfer_dagster.settings import Settings
from batchinfer_testing.deployment import engine_of, rows

NOW = datetime(2026, 12, 5, 8, 0, tzinfo=UTC)


class Recorder:
    """A ``publish`` that keeps what it was given and names each message ``m<n>``."""

    def __init__(self) -> None:
        self.published: list[bytes] = []

    def __call__(self, payloads: Sequence[bytes]) -> list[str]:
        start = len(self.published)
        self.published += payloads
        return [f"m{start + i}" for i in range(len(payloads))]


def dead_letters(settings: Settings, record_ids: list[int]) -> None:
    """Open dead letters of ``record_ids`` (a batch out of attempts) and one malformed message."""
    engine = engine_of(settings)
    (key,) = ledger.create_batches(engine, record_ids, source="test", batch_size=8, now=NOW)
    ledger.dead_letter_batch(engine, key, reason="out of attempts", now=NOW)
    ledger.ingest_messages(
        engine,
        [ReceivedMessage("9", "ack-9", b"not json", 1, NOW)],
        queue="t",
        batch_size=8,
        now=NOW,
    )


def test_replay_publishes_each_replayable_dead_letter_once(app_settings: Settings) -> None:
    dead_letters(app_settings, [3, 1, 2])
    publish = Recorder()
    engine = engine_of(app_settings)

    first = ledger.replay_dead_letters(engine, publish, ledger.DeadLetterFilter(), now=NOW)
    again = ledger.replay_dead_letters(engine, publish, ledger.DeadLetterFilter(), now=NOW)

    assert sorted(ledger.parse_record_id(p) for p in publish.published) == [1, 2, 3]
    assert (first.replayed, first.not_replayable, first.already_replayed) == (3, 1, 0)
    assert (again.replayed, again.already_replayed) == (0, 3)
    replayed = [row.replay_message_id for row in rows(app_settings, db.dead_letters)]
    assert sorted(filter(None, replayed)) == ["m0", "m1", "m2"]


def test_a_failed_publish_marks_nothing_replayed(app_settings: Settings) -> None:
    dead_letters(app_settings, [1, 2])
    engine = engine_of(app_settings)

    def down(payloads: Sequence[bytes]) -> list[str]:
        raise ConnectionError(f"queue down: {len(payloads)} payloads not sent")

    with pytest.raises(ConnectionError, match="2 payloads not sent"):
        ledger.replay_dead_letters(engine, down, ledger.DeadLetterFilter(), now=NOW)
    assert all(row.replayed_at is None for row in rows(app_settings, db.dead_letters))

    publish = Recorder()
    report = ledger.replay_dead_letters(engine, publish, ledger.DeadLetterFilter(), now=NOW)
    assert report.replayed == 2
    assert len(publish.published) == 2
