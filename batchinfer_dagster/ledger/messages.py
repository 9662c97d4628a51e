"""Request messages: the one place that encodes and parses them, and names them in the ledger.

A request is ``{"id": "<record id>"}`` (an integer id is accepted too), at most 10 KiB. The CLI's
``publish``/``predict`` encode with ``request_payload``; the sensor's intake parses with
``parse_record_id``, whose error text becomes the dead-letter reason.
"""

from __future__ import annotations

import json

from batchinfer_dagster.clients.queue import ReceivedMessage

MAX_PAYLOAD_BYTES = 10 * 1024
# BIGINT's upper bound: the largest id the records table can hold.
MAX_RECORD_ID = 2**63 - 1


class InvalidRequestError(ValueError):
    """A message that can never become a prediction request; the text is the dead-letter reason."""


def parse_record_id(data: bytes) -> int:
    """The record id of a request message ``{"id": 1}`` or ``{"id": "1"}``.

    Raises ``InvalidRequestError`` naming what is wrong; its text becomes the dead-letter reason.
    """
    if len(data) > MAX_PAYLOAD_BYTES:
        raise InvalidRequestError(
            f"payload is {len(data)} bytes, over the {MAX_PAYLOAD_BYTES}-byte limit"
        )
    try:
        body = json.loads(data)
    except ValueError as exc:
        raise InvalidRequestError(f"not JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise InvalidRequestError(f"not a JSON object but {type(body).__name__}")
    if "id" not in body:
        raise InvalidRequestError(f"no 'id' field (fields: {sorted(body)[:10]})")
    value = body["id"]
    record_id: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        record_id = value
    elif isinstance(value, str) and value.isascii() and value.isdigit():
        record_id = int(value)
    if record_id is None or not 0 < record_id <= MAX_RECORD_ID:
        raise InvalidRequestError(f"id {value!r} is not a positive integer")
    return record_id


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
