"""Request messages: what parses, and the reason each refusal gives."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from batchinfer_dagster import ledger
from batchinfer_dagster.clients.queue import ReceivedMessage

NOW = datetime(2026, 11, 25, 8, 0, tzinfo=UTC)


def message(message_id: str, data: bytes) -> ReceivedMessage:
    return ReceivedMessage(message_id, f"ack-{message_id}", data, 1, NOW)


@pytest.mark.parametrize(
    ("data", "record_id"),
    [(b'{"id": "1"}', 1), (b'{"id": 42}', 42), (b'{"id": "007", "extra": true}', 7)],
)
def test_parse_record_id_accepts_ints_and_digit_strings(data: bytes, record_id: int) -> None:
    assert ledger.parse_record_id(data) == record_id


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"not json", "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b'{"record": 1}', "no 'id' field"),
        (b'{"id": 0}', "not a positive integer"),
        (b'{"id": "-3"}', "not a positive integer"),
        (b'{"id": 1.5}', "not a positive integer"),
        (b'{"id": true}', "not a positive integer"),
        (b'{"id": "\xd9\xa3"}', "not a positive integer"),
        (b'{"id": 1, "pad": "' + b"x" * 10_240 + b'"}', "over the 10240-byte limit"),
        (b"\xff\xfe", "not JSON"),
    ],
)
def test_parse_record_id_refuses_with_a_reason(data: bytes, reason: str) -> None:
    with pytest.raises(ledger.InvalidRequestError, match=reason):
        ledger.parse_record_id(data)
