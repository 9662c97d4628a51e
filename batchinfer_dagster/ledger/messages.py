"""Request messages: the one place that encodes and parses them, and names them in the ledger.

A request is ``{"id": "<record id>"}`` (an integer id is accepted too), at most 10 KiB. The CLI's
``publish``/``predict`` encode with ``request_payload``; the sensor's intake parses with
``parse_record_id``, whose error text becomes the dead-letter reason.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Protocol

MAX_PAYLOAD_BYTES = 10 * 1024
# BIGINT's upper bound: the largest id the records table can hold.
MAX_RECORD_ID = 2**63 - 1
MAX_RECORD_ID_DIGITS = len(str(MAX_RECORD_ID))
# A request is {"id": ...}: one level; a little room for envelopes of other clients.
MAX_NESTING = 32


class ReceivedMessage(Protocol):
    """One delivery of a request message, as the ledger reads it.

    The ledger owns the shape of what it consumes: the queue clients' deliveries
    (``clients/queue.py``) have these attributes and pass in as they are, and neither the ledger
    nor a fake queue imports a client for it. For a dead letter handed back by the queue
    (``RequestQueue.pull_dead_letters``), ``delivery_attempt`` counts the deliveries the queue
    made before giving up, 0 when the queue does not say.
    """

    @property
    def message_id(self) -> str: ...

    @property
    def ack_id(self) -> str: ...

    @property
    def data(self) -> bytes: ...

    @property
    def delivery_attempt(self) -> int: ...

    @property
    def publish_time(self) -> datetime: ...


class InvalidRequestError(ValueError):
    """A message that can never become a prediction request; the text is the dead-letter reason."""


def json_nesting_depth(data: bytes) -> int:
    """The deepest nesting of arrays and objects in a JSON text, brackets inside strings aside.

    Counted on the raw bytes before parsing, so a deeply nested payload is refused in linear time
    instead of reaching ``json.loads``'s recursion (``RecursionError``, not ``ValueError``).
    """
    depth = deepest = 0
    in_string = escaped = False
    for byte in data:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):  # [ {
            depth += 1
            deepest = max(deepest, depth)
        elif byte in (0x5D, 0x7D):  # ] }
            depth -= 1
    return deepest


def record_id_of_text(value: str) -> int | None:
    """A record id written as ASCII digits, or None when it is not one of 1..2^63-1.

    The digit count is bounded before ``int()``: Python refuses to convert strings of more than
    4,300 digits with a ``ValueError`` (``sys.set_int_max_str_digits``), and an id needs at most
    19 anyway.
    """
    if not (value.isascii() and value.isdigit()) or len(value) > MAX_RECORD_ID_DIGITS:
        return None
    record_id = int(value)
    return record_id if 0 < record_id <= MAX_RECORD_ID else None


def parse_record_id(data: bytes) -> int:
    """The record id of a request message ``{"id": 1}`` or ``{"id": "1"}``.

    Raises ``InvalidRequestError`` (the dead-letter reason) for anything else; size and nesting
    are bounded before the payload is parsed.
    """
    if len(data) > MAX_PAYLOAD_BYTES:
        raise InvalidRequestError(
            f"payload is {len(data)} bytes, over the {MAX_PAYLOAD_BYTES}-byte limit"
        )
    depth = json_nesting_depth(data)
    if depth > MAX_NESTING:
        raise InvalidRequestError(
            f"payload nests {depth} levels deep, over the limit of {MAX_NESTING}"
        )
    try:
        body = json.loads(data)
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, too many digits
        raise InvalidRequestError(f"not JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise InvalidRequestError(f"not a JSON object but {type(body).__name__}")
    if "id" not in body:
        raise InvalidRequestError(f"no 'id' field (fields: {sorted(body)[:10]!r:.300})")
    value = body["id"]
    record_id: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        record_id = value if 0 < value <= MAX_RECORD_ID else None
    elif isinstance(value, str):
        record_id = record_id_of_text(value)
    if record_id is None:
        raise InvalidRequestError(f"id {value!r:.100} is not a positive integer")
    return record_id


def record_id_of_payload(data: bytes) -> int | None:
    """The record a payload asks for, or None when it is not a valid request."""
    try:
        return parse_record_id(data)
    except InvalidRequestError:
        return None


def request_payload(record_id: int) -> bytes:
    """The message that asks for a prediction of ``record_id``: ``{"id": "<id>"}``.

    The id is a string, as the system this one replaces published it; ``parse_record_id``
    accepts both forms.
    """
    return json.dumps({"id": str(record_id)}).encode()


def request_key(queue: str, message: ReceivedMessage) -> str:
    """The ledger's identity of a message: queue kind, message id and publish time.

    The queue kind keeps ids of the local queue and Pub/Sub apart on one database; the publish time
    keeps apart two messages that got the same id (SQLite reuses the rowid of a drained queue),
    while a redelivery keeps both and so maps to the same key.
    """
    published = round(message.publish_time.timestamp() * 1_000_000)
    return f"{queue}:{message.message_id}:{published}"
