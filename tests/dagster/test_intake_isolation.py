"""Intake isolation: whatever one message holds, it costs only itself, never its pull.

Each bad message becomes one dead letter (source ``sensor``) with its reason; the good messages
of the same pull are accepted, acked and predicted. Limits are pinned at their value and one past.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from dagster import DagsterInstance

from batchinfer_dagster import db, ledger
from batchinfer_dagster.clients.queue import ReceivedMessage
from batchinfer_dagster.settings import Settings
from batchinfer_testing.daemon import execute_runs, run_daemon_loop, sensor_tick
from batchinfer_testing.deployment import (
    add_features,
    engine_of,
    publish_json,
    queue_is_empty,
    rows,
)

POISON_ID = "9" * 5000  # int() refuses strings over 4,300 digits with a ValueError
NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def message(position: int, data: bytes, *, message_id: str | None = None) -> ReceivedMessage:
    return ReceivedMessage(
        message_id=message_id or str(position),
        ack_id=f"ack-{position}",
        data=data,
        delivery_attempt=1,
        publish_time=NOW - timedelta(seconds=position),
    )


def test_a_poison_id_between_two_good_requests_costs_only_itself(
    instance: DagsterInstance, pipeline_settings: Settings
) -> None:
    """Issue example 1: {"id": "<5000 digits>"} between {"id": "1"} and {"id": "2"}."""
    add_features(pipeline_settings, [1, 2])
    publish_json(pipeline_settings, [{"id": "1"}, {"id": POISON_ID}, {"id": "2"}])

    first = sensor_tick(instance, pipeline_settings)
    assert len(first.run_requests) == 1  # the tick did not raise, and made one batch
    assert all(run.success for run in execute_runs(instance, pipeline_settings, first.run_requests))
    run_daemon_loop(instance, pipeline_settings)

    predicted = {row.record_id for row in rows(pipeline_settings, db.predictions)}
    assert predicted == {1, 2}
    [dead] = rows(pipeline_settings, db.dead_letters)
    assert dead.source == ledger.DeadLetterSource.SENSOR
    assert "not a positive integer" in dead.reason
    assert dead.payload == json.dumps({"id": POISON_ID})
    assert queue_is_empty(pipeline_settings)  # all three acked: nothing comes back


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (json.dumps({"id": POISON_ID}).encode(), "not a positive integer"),
        (b'{"id": ' + b"9" * 5000 + b"}", "not JSON"),  # json.loads refuses too many digits
        (b'{"id": 1, "x": ' + b"[" * 5000 + b"]" * 5000 + b"}", "nests 5001 levels"),
        (b"[" * 100_000, "over the 10240-byte limit"),
        (b'{"id": "1\x00"}', "not JSON"),  # NUL: PostgreSQL text cannot hold it raw
        (b"\x00\x00\x00", "not JSON"),
        (b'{"id": "\\ud800"}', "not a positive integer"),  # a lone surrogate
        (b'{"id": "\xed\xa0\x80"}', "not a positive integer"),  # json: surrogatepass
        (b'{"id": NaN}', "not a positive integer"),
        (b'{"id": 1e999}', "not a positive integer"),
        (b'{"id": "00000000000000000001"}', "not a positive integer"),  # 20 digits
    ],
)
def test_each_hostile_payload_is_dead_lettered_and_the_pull_goes_on(
    app_settings: Settings, payload: bytes, reason: str
) -> None:
    engine = engine_of(app_settings)
    pull = [message(1, b'{"id": "1"}'), message(2, payload), message(3, b'{"id": 2}')]

    result = ledger.ingest_messages(engine, pull, queue="local", batch_size=10, now=NOW)

    assert (result.accepted, result.dead_lettered) == (2, 1)
    assert sorted(result.ack_ids) == ["ack-1", "ack-2", "ack-3"]
    requests = rows(app_settings, db.prediction_requests)
    assert sorted(row.record_id for row in requests) == [1, 2]
    [dead] = rows(app_settings, db.dead_letters)
    assert reason in dead.reason
    assert dead.payload == db.storable_text(payload)
    assert "\x00" not in dead.payload
    assert dead.delivery_attempts == 1


def test_an_unexpected_error_in_one_message_is_its_dead_letter_reason(
    app_settings: Settings,
) -> None:
    """Not a parse error: a message the queue handed over without a publish time."""
    engine = engine_of(app_settings)
    broken = ReceivedMessage("7", "ack-7", b'{"id": 7}', 1, None)  # type: ignore[arg-type]
    pull = [message(1, b'{"id": 1}'), broken, message(3, b'{"id": 3}')]

    result = ledger.ingest_messages(engine, pull, queue="local", batch_size=10, now=NOW)

    assert (result.accepted, result.dead_lettered, len(result.ack_ids)) == (2, 1, 3)
    [dead] = rows(app_settings, db.dead_letters)
    assert dead.reason.startswith("could not read the message: AttributeError")


@pytest.mark.parametrize(
    ("size", "accepted"),
    [(ledger.MAX_PAYLOAD_BYTES, True), (ledger.MAX_PAYLOAD_BYTES + 1, False)],
)
def test_payload_size_limit_at_its_value_and_one_past(size: int, accepted: bool) -> None:
    head = b'{"id": "5", "pad": "'
    payload = head + b"x" * (size - len(head) - 2) + b'"}'
    assert len(payload) == size
    if accepted:
        assert ledger.parse_record_id(payload) == 5
    else:
        with pytest.raises(ledger.InvalidRequestError, match="over the 10240-byte limit"):
            ledger.parse_record_id(payload)


@pytest.mark.parametrize(
    ("depth", "accepted"), [(ledger.MAX_NESTING, True), (ledger.MAX_NESTING + 1, False)]
)
def test_nesting_limit_at_its_value_and_one_past(depth: int, accepted: bool) -> None:
    inner = depth - 1  # the object itself is one level
    payload = b'{"id": 5, "x": ' + b"[" * inner + b"]" * inner + b"}"
    assert ledger.json_nesting_depth(payload) == depth
    if accepted:
        assert ledger.parse_record_id(payload) == 5
    else:
        with pytest.raises(ledger.InvalidRequestError, match=f"nests {depth} levels"):
            ledger.parse_record_id(payload)


def test_brackets_inside_strings_do_not_count_as_nesting() -> None:
    payload = json.dumps({"id": "8", "note": "[[[[" * 40 + '\\" {{{{' * 40}).encode()
    assert ledger.json_nesting_depth(payload) == 1
    assert ledger.parse_record_id(payload) == 8


@pytest.mark.parametrize(
    ("value", "record_id"),
    [
        (ledger.MAX_RECORD_ID, ledger.MAX_RECORD_ID),
        (str(ledger.MAX_RECORD_ID), ledger.MAX_RECORD_ID),
        (ledger.MAX_RECORD_ID + 1, None),
        (str(ledger.MAX_RECORD_ID + 1), None),
        (1, 1),
        ("1", 1),
        (0, None),
        ("0", None),
        ("0" * 18 + "1", 1),  # 19 digits: the most an id can need
        ("0" * 19 + "1", None),  # 20 digits: refused before int()
    ],
)
def test_record_id_bounds_at_their_value_and_one_past(
    value: int | str, record_id: int | None
) -> None:
    payload = json.dumps({"id": value}).encode()
    if record_id is None:
        with pytest.raises(ledger.InvalidRequestError, match="not a positive integer"):
            ledger.parse_record_id(payload)
    else:
        assert ledger.parse_record_id(payload) == record_id


def test_reingesting_2001_messages_accepts_none_and_makes_no_batch(app_settings: Settings) -> None:
    """The redelivery check crosses its 1,000-row chunks (1,000 + 1,000 + 1) without a gap."""
    engine = engine_of(app_settings)
    pull = [message(i, json.dumps({"id": i}).encode()) for i in range(1, 2002)]
    first = ledger.ingest_messages(engine, pull, queue="local", batch_size=512, now=NOW)
    assert (first.accepted, len(first.batch_keys)) == (2001, 4)

    again = ledger.ingest_messages(engine, pull, queue="local", batch_size=512, now=NOW)

    assert (again.accepted, again.redelivered, again.batch_keys) == (0, 2001, [])
    with engine.connect() as connection:
        batches = connection.execute(
            sa.select(sa.func.count()).select_from(db.prediction_batches)
        ).scalar_one()
        requests = connection.execute(
            sa.select(sa.func.count()).select_from(db.prediction_requests)
        ).scalar_one()
    assert (batches, requests) == (4, 2001)
