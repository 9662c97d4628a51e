"""The request message's rules on the raw bytes: nesting counted with strings and escapes,
closing on either bracket; the record id's digit and value bounds; the ledger's message key.

The sensor's intake applies these before anything is parsed (``ledger/messages.py``); each
case has a neighbour the rule must tell apart: ``[`` and ``{``, ``]`` and ``}``, a quote that
ends a string and one that is escaped, 19 digits and 20, the largest id and one past.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from batchinfer_dagster import ledger
from batchinfer_dagster.clients.queue import ReceivedMessage
from batchinfer_dagster.ledger.messages import record_id_of_text


@pytest.mark.parametrize(
    ("data", "depth"),
    [
        (b"", 0),
        (b"5", 0),
        (b"{}", 1),
        (b"[[[]]]", 3),
        (b"{{{}}}", 3),
        (b"[{[]}]", 3),
        # Each level closes on its own bracket, `]` or `}`: siblings do not add up.
        (b"{}{}{}", 1),
        (b"[][][]", 1),
        (b'[{"a": {}}, {"b": {}}]', 3),
        # Brackets inside strings are text.
        (b'"[{["', 0),
        (b'{"k": "}}}]]]"}', 1),
        # An escaped quote does not end the string; an escaped backslash does not escape it.
        (b'["\\"[", [[]]]', 3),
        (b'["\\\\", [[]]]', 3),
        (b'"\\\\"[[', 2),
    ],
)
def test_nesting_depth_counts_open_brackets_outside_strings(data: bytes, depth: int) -> None:
    assert ledger.json_nesting_depth(data) == depth


def test_nesting_past_the_limit_is_refused_with_either_bracket() -> None:
    objects = b'{"id": 5, "x": ' + b'{"y": ' * ledger.MAX_NESTING + b"1" + b"}" * 33
    with pytest.raises(ledger.InvalidRequestError, match=r"nests 33 levels deep, over the limit"):
        ledger.parse_record_id(objects)
    siblings = b'{"id": 5, "x": [' + b"{}," * 100 + b"{}]}"
    assert ledger.parse_record_id(siblings) == 5


@pytest.mark.parametrize(
    ("text", "record_id"),
    [
        ("1", 1),
        ("0", None),
        ("0" * 18 + "1", 1),  # 19 digits: the most an id needs
        ("0" * 19 + "1", None),  # 20: refused before int()
        (str(ledger.MAX_RECORD_ID), ledger.MAX_RECORD_ID),
        (str(ledger.MAX_RECORD_ID + 1), None),
        ("12a", None),
        ("\u0663", None),  # ARABIC-INDIC DIGIT THREE: a digit, not ASCII
        ("", None),
    ],
)
def test_a_record_id_in_text_is_1_to_2_63_minus_1_in_ascii_digits(
    text: str, record_id: int | None
) -> None:
    assert record_id_of_text(text) == record_id


def test_the_message_key_is_queue_id_and_publish_time_in_microseconds() -> None:
    published = datetime(2026, 12, 5, 9, 0, 0, 123456, tzinfo=UTC)
    message = ReceivedMessage("42", "ack", b"{}", 1, published)
    assert ledger.request_key("pubsub", message) == f"pubsub:42:{1_796_461_200_123_456}"


@pytest.mark.parametrize("size", [ledger.MAX_PAYLOAD_BYTES, ledger.MAX_PAYLOAD_BYTES + 1])
def test_the_payload_limit_at_its_value_and_one_past(size: int) -> None:
    head = b'{"id": "5", "pad": "'
    payload = head + b"x" * (size - len(head) - 2) + b'"}'
    if size == ledger.MAX_PAYLOAD_BYTES:
        assert ledger.parse_record_id(payload) == 5
    else:
        with pytest.raises(ledger.InvalidRequestError, match=r"^payload is 10241 bytes, over"):
            ledger.parse_record_id(payload)


def test_nesting_at_the_limit_is_accepted() -> None:
    payload = b'{"id": 5, "x": ' + b"[" * (ledger.MAX_NESTING - 1) + b"]" * 31 + b"}"
    assert ledger.json_nesting_depth(payload) == ledger.MAX_NESTING
    assert ledger.parse_record_id(payload) == 5


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"[1]", "^not a JSON object but list$"),
        (b'"5"', "^not a JSON object but str$"),
        (
            b'{"k": 1, "j": 1, "i": 1, "h": 1, "g": 1, "f": 1, "e": 1, "d": 1, "c": 1, "b": 1, '
            b'"a": 1}',
            r"^no 'id' field \(fields: \['a', 'b', 'c', 'd', 'e', 'f', 'g', 'h', 'i', 'j'\]\)$",
        ),
        (b'{"id": 9223372036854775808}', "^id 9223372036854775808 is not a positive integer$"),
    ],
)
def test_a_refusal_names_what_the_message_held(data: bytes, reason: str) -> None:
    with pytest.raises(ledger.InvalidRequestError, match=reason):
        ledger.parse_record_id(data)


def test_the_largest_integer_id_is_accepted() -> None:
    assert ledger.parse_record_id(b'{"id": 9223372036854775807}') == ledger.MAX_RECORD_ID
