"""The request ledger (design §3): what the sensor and the prediction runs write, Dagster-free.

The database is the source of truth and the queue only transport, so every step that must not be
lost or repeated is one transaction here: the sensor's intake of a pull, the re-batching of
requests that waited for features, a run's settling of its batch, and the dead-lettering of what
can never succeed. Nothing here imports Dagster, so the CLI and tests use it directly.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Connection, Engine
from sqlalchemy.dialects import postgresql, sqlite

from batchinfer_dagster import db
from batchinfer_dagster.partitions import new_batch_key
from batchinfer_dagster.resources.feature_store import FeatureStore
from batchinfer_dagster.resources.model_client import (
    ModelClient,
    Prediction,
    PredictParameters,
    RefusedText,
)
from batchinfer_dagster.resources.queue import ReceivedMessage, RequestQueue

MAX_PAYLOAD_BYTES = 10 * 1024
MAX_RECORD_ID = 2**63 - 1
MAX_RECORD_ID_DIGITS = len(str(MAX_RECORD_ID))
# A request is {"id": ...}: one level; a little room for envelopes of other clients.
MAX_NESTING = 32
UNKNOWN_RECORD = "unknown record id"

# prediction_requests.status
QUEUED = "queued"
WAITING_FEATURES = "waiting_features"
DONE = "done"
DEAD_LETTERED = "dead_lettered"
# prediction_batches.status (also QUEUED and DEAD_LETTERED)
RUNNING = "running"
SUCCEEDED = "succeeded"
FAILED = "failed"

# dead_letters.source
SENSOR_SOURCE = "sensor"
LEDGER_SOURCE = "ledger"
# A record the model server refused on its own (or too large to send): the server's reason.
MODEL_SOURCE = "model"
# A message Pub/Sub moved to the dead-letter topic, read back from its subscription.
PUBSUB_DEAD_LETTER_SOURCE = "pubsub-dead-letter"
# The attribute Pub/Sub sets on a dead-lettered message: deliveries to the source subscription.
DEAD_LETTER_DELIVERIES_ATTRIBUTE = "CloudPubSubDeadLetterSourceDeliveryCount"

# A record missing from the feature store is looked up again after 5 s, 10 s, 20 s, ... 60 s.
FEATURE_BACKOFF_BASE = timedelta(seconds=5)
FEATURE_BACKOFF_MAX = timedelta(seconds=60)

# Rows per IN (...) list: far under SQLite's and PostgreSQL's bound-parameter limits.
IN_CHUNK = 1000
MAX_ERROR_CHARS = 2000


class InvalidRequestError(ValueError):
    """A message that can never become a prediction request; the text is the dead-letter reason."""


class UnknownBatchError(LookupError):
    """A batch key that the ledger does not hold."""


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


def request_key(queue: str, message: ReceivedMessage) -> str:
    """The ledger's identity of a message: queue kind, message id and publish time.

    The queue kind keeps ids of the local queue and Pub/Sub apart on one database; the publish time
    keeps apart two messages that got the same id (SQLite reuses the rowid of a drained queue),
    while a redelivery keeps both and so maps to the same key.
    """
    published = round(message.publish_time.timestamp() * 1_000_000)
    return f"{queue}:{message.message_id}:{published}"


@dataclass(frozen=True)
class IngestResult:
    """What one intake transaction did; ``ack_ids`` may be acked once it returned."""

    batch_keys: list[str]
    accepted: int
    redelivered: int
    dead_lettered: int
    ack_ids: list[str]
    # Queued batches of redelivered requests, with their attempt: the tick that wrote them may
    # have died before its run requests reached Dagster, so they are requested again (same key).
    resumed: dict[str, int] = field(default_factory=dict)


def _existing(connection: Connection, column: sa.Column, values: Sequence[str]) -> set[str]:
    found: set[str] = set()
    for start in range(0, len(values), IN_CHUNK):
        chunk = values[start : start + IN_CHUNK]
        found.update(connection.execute(sa.select(column).where(column.in_(chunk))).scalars())
    return found


def _queued_batches_of(connection: Connection, message_keys: Sequence[str]) -> dict[str, int]:
    requests = db.prediction_requests
    batches = db.prediction_batches
    found: dict[str, int] = {}
    for start in range(0, len(message_keys), IN_CHUNK):
        chunk = message_keys[start : start + IN_CHUNK]
        rows = connection.execute(
            sa.select(batches.c.batch_key, batches.c.attempts)
            .join(requests, requests.c.batch_key == batches.c.batch_key)
            .where(requests.c.message_id.in_(chunk), batches.c.status == QUEUED)
            .distinct()
        )
        found.update({row.batch_key: row.attempts for row in rows})
    return found


def _insert_ignoring_conflicts(
    connection: Connection, table: sa.Table, rows: Sequence[Mapping[str, Any]]
) -> None:
    if not rows:
        return
    dialect = postgresql if connection.dialect.name == "postgresql" else sqlite
    connection.execute(dialect.insert(table).on_conflict_do_nothing(), list(rows))


def _new_batches(connection: Connection, count: int, now: datetime) -> list[str]:
    """Insert ``count`` batch rows, queued with their first run requested (attempt 1)."""
    keys = [new_batch_key(now) for _ in range(count)]
    if keys:
        connection.execute(
            db.prediction_batches.insert(),
            [
                {
                    "batch_key": key,
                    "created_at": now,
                    "updated_at": now,
                    "status": QUEUED,
                    "attempts": 1,
                    "run_id": None,
                }
                for key in keys
            ],
        )
    return keys


def _chunks(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
    return [items[start : start + size] for start in range(0, len(items), size)]


def _queued_request_rows(
    batch_keys: Sequence[str], groups: Sequence[Sequence[tuple[str, int]]], now: datetime
) -> list[dict[str, Any]]:
    """Ledger rows for ``(message id, record id)`` groups, one group per new batch."""
    return [
        {
            "message_id": message_id,
            "record_id": record_id,
            "batch_key": batch_key,
            "status": QUEUED,
            "attempts": 0,
            "received_at": now,
            "updated_at": now,
        }
        for batch_key, group in zip(batch_keys, groups, strict=True)
        for message_id, record_id in group
    ]


def message_error(message: ReceivedMessage, error: Exception) -> str:
    """The dead-letter reason of a message whose handling raised ``error``."""
    if isinstance(error, InvalidRequestError):
        return str(error)
    return f"could not read the message: {type(error).__name__}: {error}"[:MAX_ERROR_CHARS]


def classify_messages(
    messages: Sequence[ReceivedMessage], *, queue: str
) -> tuple[dict[str, int], dict[str, tuple[ReceivedMessage, str]]]:
    """Split a pull into valid requests (request key → record id) and dead letters (→ reason).

    Every step of one message runs under its own ``except Exception``: whatever a message holds
    (or whatever a bug makes of it), it costs only itself, never the rest of the pull. A message
    delivered twice in one pull counts once.
    """
    valid: dict[str, int] = {}
    invalid: dict[str, tuple[ReceivedMessage, str]] = {}
    for position, message in enumerate(messages):
        try:
            key = request_key(queue, message)
        except Exception as exc:  # charged to this message alone
            key = f"{queue}:unreadable:{position}:{message.ack_id}"[:128]
            invalid[key] = (message, message_error(message, exc))
            continue
        if key in valid or key in invalid:
            continue
        try:
            valid[key] = parse_record_id(message.data)
        except Exception as exc:  # charged to this message alone
            invalid[key] = (message, message_error(message, exc))
    return valid, invalid


def ingest_messages(
    engine: Engine,
    messages: Sequence[ReceivedMessage],
    *,
    queue: str,
    batch_size: int,
    now: datetime,
) -> IngestResult:
    """Write a pull into the ledger in one transaction: requests, their batches, dead letters.

    A message the ledger already holds (a redelivery after a crash before the ack) is skipped, so
    acking everything afterwards is safe. Malformed messages become dead letters once.
    """
    valid, invalid = classify_messages(messages, queue=queue)
    with engine.begin() as connection:
        known = _existing(connection, db.prediction_requests.c.message_id, list(valid))
        resumed = _queued_batches_of(connection, sorted(known))
        new = [(key, record_id) for key, record_id in valid.items() if key not in known]
        groups = _chunks(new, batch_size)
        batch_keys = _new_batches(connection, len(groups), now)
        rows = _queued_request_rows(batch_keys, groups, now)
        _insert_ignoring_conflicts(connection, db.prediction_requests, rows)
        dead_known = _existing(connection, db.dead_letters.c.message_id, list(invalid))
        dead_rows = [
            {
                "source": SENSOR_SOURCE,
                "message_id": key,
                "payload": db.storable_text(message.data),
                "reason": db.storable_text(reason),
                "delivery_attempts": message.delivery_attempt,
                "received_at": now,
            }
            for key, (message, reason) in invalid.items()
            if key not in dead_known
        ]
        if dead_rows:
            connection.execute(db.dead_letters.insert(), dead_rows)
    return IngestResult(
        batch_keys=batch_keys,
        accepted=len(new),
        redelivered=len(valid) - len(new),
        dead_lettered=len(dead_rows),
        ack_ids=[message.ack_id for message in messages],
        resumed=resumed,
    )


def _predicted_by(
    connection: Connection, record_ids: Sequence[int], model_name: str
) -> dict[int, str | None]:
    """The run that wrote each record's prediction, for records that have one."""
    table = db.predictions
    found: dict[int, str | None] = {}
    for chunk in _chunks(sorted(set(record_ids)), IN_CHUNK):
        rows = connection.execute(
            sa.select(table.c.record_id, table.c.run_id).where(
                table.c.model == model_name, table.c.record_id.in_(chunk)
            )
        )
        found.update({row.record_id: row.run_id for row in rows})
    return found


def record_queue_dead_letters(
    engine: Engine,
    messages: Sequence[ReceivedMessage],
    *,
    queue: str,
    model_name: str,
    now: datetime,
) -> int:
    """Write messages the queue service dead-lettered into ``dead_letters``; returns how many.

    Each keeps its payload, its delivery attempts (Pub/Sub's
    ``CloudPubSubDeadLetterSourceDeliveryCount`` attribute) and the record it asks for. A message
    read back twice (its ack was lost) is written once. A record that was predicted anyway (the
    sensor wrote the ledger, but every ack of the message failed) is written as resolved.
    """
    rows: dict[str, dict[str, Any]] = {}
    for message in messages:
        key = request_key(f"{queue}-dead-letter", message)
        attempts_text = message.attributes.get(DEAD_LETTER_DELIVERIES_ATTRIBUTE, "")
        attempts = (
            int(attempts_text) if attempts_text.isdigit() and len(attempts_text) < 9 else None
        )
        rows.setdefault(
            key,
            {
                "source": PUBSUB_DEAD_LETTER_SOURCE,
                "message_id": key,
                "payload": db.storable_text(message.data),
                "reason": (
                    f"Pub/Sub dead-lettered the message after {attempts or 'its maximum'} "
                    "delivery attempts without an acknowledgement"
                ),
                "record_id": record_id_of_payload(message.data),
                "delivery_attempts": attempts,
                "received_at": now,
                "resolved_at": None,
                "resolved_by_run": None,
            },
        )
    with engine.begin() as connection:
        known = _existing(connection, db.dead_letters.c.message_id, list(rows))
        new = [row for key, row in rows.items() if key not in known]
        predicted = _predicted_by(
            connection, [r["record_id"] for r in new if r["record_id"] is not None], model_name
        )
        for row in new:
            if row["record_id"] in predicted:
                row["resolved_at"] = now
                row["resolved_by_run"] = predicted[row["record_id"]]
        if new:
            connection.execute(db.dead_letters.insert(), new)
    return len(new)


def create_batches(
    engine: Engine, record_ids: Sequence[int], *, source: str, batch_size: int, now: datetime
) -> list[str]:
    """Requests for chosen record ids, written straight to the ledger (manual runs, no queue)."""
    for record_id in record_ids:
        if not 0 < record_id <= MAX_RECORD_ID:
            raise InvalidRequestError(f"record id {record_id!r} is not a positive integer")
    prefix = f"{source}:{uuid.uuid4().hex}"
    groups = [
        [(f"{prefix}:{index}:{position}", record_id) for position, record_id in enumerate(group)]
        for index, group in enumerate(_chunks(list(record_ids), batch_size))
    ]
    with engine.begin() as connection:
        batch_keys = _new_batches(connection, len(groups), now)
        rows = _queued_request_rows(batch_keys, groups, now)
        if rows:
            connection.execute(db.prediction_requests.insert(), rows)
    return batch_keys


def rebatch_waiting(engine: Engine, *, now: datetime, batch_size: int, limit: int) -> list[str]:
    """Put requests whose feature backoff has passed into new batches; returns the batch keys."""
    table = db.prediction_requests
    with engine.begin() as connection:
        keys = list(
            connection.execute(
                sa.select(table.c.message_id)
                .where(table.c.status == WAITING_FEATURES, table.c.not_before <= now)
                .order_by(table.c.not_before)
                .limit(limit)
            ).scalars()
        )
        groups = _chunks(keys, batch_size)
        batch_keys = _new_batches(connection, len(groups), now)
        for batch_key, group in zip(batch_keys, groups, strict=True):
            connection.execute(
                sa.update(table)
                .where(table.c.message_id.in_(group))
                .values(batch_key=batch_key, status=QUEUED, updated_at=now)
            )
    return batch_keys


@dataclass(frozen=True)
class BatchState:
    """A batch as the reconcile step sees it."""

    batch_key: str
    status: str
    attempts: int
    run_id: str | None


def batches_to_reconcile(
    engine: Engine, *, now: datetime, stale_after: timedelta, limit: int
) -> list[BatchState]:
    """Failed batches, and queued or running ones untouched for ``stale_after``, oldest first.

    ``limit`` bounds the work of one sensor tick; batches still in flight are touched by
    ``touch_batches`` so that the next tick looks at others.
    """
    table = db.prediction_batches
    with engine.connect() as connection:
        rows = connection.execute(
            sa.select(table.c.batch_key, table.c.status, table.c.attempts, table.c.run_id)
            .where(
                sa.or_(
                    table.c.status == FAILED,
                    sa.and_(
                        table.c.status.in_([QUEUED, RUNNING]),
                        table.c.updated_at <= now - stale_after,
                    ),
                )
            )
            .order_by(table.c.updated_at)
            .limit(limit)
        ).all()
    return [BatchState(row.batch_key, row.status, row.attempts, row.run_id) for row in rows]


def touch_batches(engine: Engine, batch_keys: Sequence[str], *, now: datetime) -> None:
    """Mark batches as looked at, so the bounded reconcile moves on to others."""
    table = db.prediction_batches
    with engine.begin() as connection:
        for chunk in _chunks(list(batch_keys), IN_CHUNK):
            connection.execute(
                sa.update(table).where(table.c.batch_key.in_(chunk)).values(updated_at=now)
            )


def retry_batches(engine: Engine, batch_keys: Sequence[str], *, now: datetime) -> dict[str, int]:
    """Count one more run attempt for each batch; returns the new attempt number by batch key."""
    table = db.prediction_batches
    attempts: dict[str, int] = {}
    with engine.begin() as connection:
        for chunk in _chunks(list(batch_keys), IN_CHUNK):
            connection.execute(
                sa.update(table)
                .where(table.c.batch_key.in_(chunk))
                .values(status=QUEUED, attempts=table.c.attempts + 1, updated_at=now)
            )
            rows = connection.execute(
                sa.select(table.c.batch_key, table.c.attempts).where(table.c.batch_key.in_(chunk))
            )
            attempts.update({row.batch_key: row.attempts for row in rows})
    return attempts


def _dead_letter_requests(
    connection: Connection,
    rows: Sequence[Any],
    reason: str,
    now: datetime,
    *,
    source: str = LEDGER_SOURCE,
    reasons: Mapping[str, str] | None = None,
) -> None:
    """Move request rows (message_id, record_id) to dead letters with ``reason``.

    ``reasons`` (by message id) overrides ``reason`` for single requests: a record the model
    server refused carries the server's own reason.
    """
    if not rows:
        return
    reasons = reasons or {}
    table = db.prediction_requests
    connection.execute(
        sa.update(table)
        .where(table.c.message_id == sa.bindparam("key"))
        .values(status=DEAD_LETTERED, error=sa.bindparam("why"), updated_at=now),
        [
            {"key": row.message_id, "why": reasons.get(row.message_id, reason)[:MAX_ERROR_CHARS]}
            for row in rows
        ],
    )
    connection.execute(
        db.dead_letters.insert(),
        [
            {
                "source": source,
                "message_id": row.message_id,
                "payload": json.dumps({"id": str(row.record_id)}),
                "reason": db.storable_text(reasons.get(row.message_id, reason)),
                "record_id": row.record_id,
                "received_at": now,
            }
            for row in rows
        ],
    )


def dead_letter_batch(engine: Engine, batch_key: str, *, reason: str, now: datetime) -> int:
    """Give up on a batch: its queued requests become dead letters; returns how many."""
    requests = db.prediction_requests
    batches = db.prediction_batches
    with engine.begin() as connection:
        rows = connection.execute(
            sa.select(requests.c.message_id, requests.c.record_id).where(
                requests.c.batch_key == batch_key, requests.c.status == QUEUED
            )
        ).all()
        _dead_letter_requests(connection, rows, reason, now)
        connection.execute(
            sa.update(batches)
            .where(batches.c.batch_key == batch_key)
            .values(status=DEAD_LETTERED, updated_at=now)
        )
    return len(rows)


def last_error(engine: Engine, batch_key: str) -> str | None:
    """The error a failed run left on the batch's requests, for the dead-letter reason."""
    table = db.prediction_requests
    with engine.connect() as connection:
        return connection.execute(
            sa.select(table.c.error)
            .where(table.c.batch_key == batch_key, table.c.error.is_not(None))
            .limit(1)
        ).scalar()


@dataclass(frozen=True)
class BatchRequest:
    """One request of a batch, as a run reads it."""

    message_id: str
    record_id: int
    status: str
    attempts: int
    received_at: datetime


def start_batch(
    engine: Engine, batch_key: str, *, run_id: str, now: datetime
) -> list[BatchRequest]:
    """Mark the batch running under ``run_id`` and read its requests.

    Requests that moved on to wait for features belong to a later batch and are left out; done
    and dead-lettered ones are read too, so a re-materialization recomputes the whole batch.
    """
    batches = db.prediction_batches
    requests = db.prediction_requests
    with engine.begin() as connection:
        updated = connection.execute(
            sa.update(batches)
            .where(batches.c.batch_key == batch_key)
            .values(status=RUNNING, run_id=run_id, updated_at=now)
        )
        if updated.rowcount == 0:
            raise UnknownBatchError(
                f"batch {batch_key!r} is not in prediction_batches: partitions are created by "
                "the sensor or predict_records_job, not by hand"
            )
        rows = connection.execute(
            sa.select(
                requests.c.message_id,
                requests.c.record_id,
                requests.c.status,
                requests.c.attempts,
                requests.c.received_at,
            )
            .where(requests.c.batch_key == batch_key, requests.c.status != WAITING_FEATURES)
            .order_by(requests.c.message_id)
        ).all()
    return [BatchRequest(*row) for row in rows]


def fail_batch(engine: Engine, batch_key: str, *, error: str, now: datetime) -> None:
    """Record a failed run; the sensor's reconcile decides whether it runs again."""
    batches = db.prediction_batches
    requests = db.prediction_requests
    with engine.begin() as connection:
        connection.execute(
            sa.update(batches)
            .where(batches.c.batch_key == batch_key)
            .values(status=FAILED, updated_at=now)
        )
        connection.execute(
            sa.update(requests)
            .where(requests.c.batch_key == batch_key, requests.c.status == QUEUED)
            .values(error=error[:MAX_ERROR_CHARS], updated_at=now)
        )


@dataclass(frozen=True)
class BatchOutcome:
    """What a run did with its batch; becomes the materialization's metadata."""

    batch_key: str
    requests: int
    records: int
    predicted: list[int]
    waiting: int
    dead_lettered: int
    model_seconds: float
    label_counts: dict[str, int] = field(default_factory=dict)
    # Records the model server refused on their own: dead letters of source "model".
    refused: int = 0


def feature_backoff(attempts: int) -> timedelta:
    """How long a request waits before its record is looked up again."""
    return min(FEATURE_BACKOFF_MAX, FEATURE_BACKOFF_BASE * 2 ** min(attempts, 16))


def write_predictions(
    connection: Connection,
    answers: Mapping[int, Prediction],
    *,
    model_name: str,
    batch_key: str,
    run_id: str,
    now: datetime,
) -> None:
    """Upsert on (record_id, model): a redelivered or re-run record never gets a second row."""
    db.upsert(
        connection,
        db.predictions,
        [
            {
                "record_id": record_id,
                "model": model_name,
                # A text with NUL (a Vertex feature store can hold one) fits PostgreSQL escaped.
                "sequence": db.storable_text(answer.sequence),
                "labels": answer.labels,
                "scores": answer.scores,
                "batch_key": batch_key,
                "run_id": run_id,
                "created_at": now,
                "updated_at": now,
            }
            for record_id, answer in answers.items()
        ],
        key=["record_id", "model"],
        update=["sequence", "labels", "scores", "batch_key", "run_id", "updated_at"],
    )


def resolve_dead_letters(
    connection: Connection, record_ids: Sequence[int], *, run_id: str, now: datetime
) -> int:
    """Mark the open dead letters of records that now have a prediction as resolved by ``run_id``.

    Called in the transaction that writes those predictions, so a dead letter is never open for a
    predicted record (nor resolved for one whose prediction was rolled back). Returns how many.
    """
    table = db.dead_letters
    resolved = 0
    for chunk in _chunks(sorted(set(record_ids)), IN_CHUNK):
        resolved += connection.execute(
            sa.update(table)
            .where(table.c.record_id.in_(chunk), table.c.resolved_at.is_(None))
            .values(resolved_at=now, resolved_by_run=run_id)
        ).rowcount
    return resolved


def _settle_missing(
    connection: Connection,
    missing: Sequence[BatchRequest],
    *,
    feature_wait: timedelta,
    now: datetime,
) -> tuple[int, int]:
    """Requests whose record is not in the feature store: wait with backoff, or dead-letter."""
    expired = [r for r in missing if now - r.received_at >= feature_wait]
    waiting = [r for r in missing if now - r.received_at < feature_wait]
    _dead_letter_requests(connection, expired, UNKNOWN_RECORD, now)
    if waiting:
        table = db.prediction_requests
        connection.execute(
            sa.update(table)
            .where(table.c.message_id == sa.bindparam("key"))
            .values(
                status=WAITING_FEATURES,
                attempts=table.c.attempts + 1,
                not_before=sa.bindparam("retry_at"),
                updated_at=now,
            ),
            [
                {
                    "key": r.message_id,
                    "retry_at": min(
                        now + feature_backoff(r.attempts), r.received_at + feature_wait
                    ),
                }
                for r in waiting
            ],
        )
    return len(waiting), len(expired)


@dataclass(frozen=True)
class BatchAnswers:
    """What the model server made of a batch's records: predictions, and refusals by reason."""

    predictions: Mapping[int, Prediction]
    refused: Mapping[int, str] = field(default_factory=dict)


def _settle_batch(
    engine: Engine,
    batch_key: str,
    requests: Sequence[BatchRequest],
    answers: BatchAnswers,
    *,
    model_name: str,
    run_id: str,
    feature_wait: timedelta,
    now: datetime,
) -> tuple[int, int]:
    """One transaction: predictions, request statuses, dead letters and the batch's success.

    A record the server refused is dead-lettered alone with the server's reason; dead letters of
    the records predicted now are resolved by this run in the same transaction.
    """
    predicted = answers.predictions
    done = [r.message_id for r in requests if r.record_id in predicted]
    refused = [r for r in requests if r.record_id in answers.refused and r.status != DEAD_LETTERED]
    missing = [
        r
        for r in requests
        if r.record_id not in predicted
        and r.record_id not in answers.refused
        and r.status != DEAD_LETTERED
    ]
    table = db.prediction_requests
    with engine.begin() as connection:
        write_predictions(
            connection,
            predicted,
            model_name=model_name,
            batch_key=batch_key,
            run_id=run_id,
            now=now,
        )
        for chunk in _chunks(done, IN_CHUNK):
            connection.execute(
                sa.update(table)
                .where(table.c.message_id.in_(chunk))
                .values(status=DONE, error=None, updated_at=now)
            )
        resolve_dead_letters(connection, list(predicted), run_id=run_id, now=now)
        _dead_letter_requests(
            connection,
            refused,
            "the model server refused the record",
            now,
            source=MODEL_SOURCE,
            reasons={r.message_id: answers.refused[r.record_id] for r in refused},
        )
        waiting, dead = _settle_missing(connection, missing, feature_wait=feature_wait, now=now)
        dead += len(refused)
        connection.execute(
            sa.update(db.prediction_batches)
            .where(db.prediction_batches.c.batch_key == batch_key)
            .values(status=SUCCEEDED, updated_at=now)
        )
    return waiting, dead


def predict_batch(
    engine: Engine,
    feature_store: FeatureStore,
    model_client: ModelClient,
    parameters: PredictParameters,
    *,
    model_name: str,
    batch_key: str,
    run_id: str,
    feature_wait: timedelta,
    clock: Callable[[], datetime] = db.utcnow,
) -> BatchOutcome:
    """Predict every record of a batch once and settle its requests.

    Features of the whole batch come in one fetch and texts go to the model server in chunks;
    a record requested twice is predicted once. Model errors propagate before anything is
    written, so a failed run leaves the batch as it was (idempotent on retry).
    """
    requests = start_batch(engine, batch_key, run_id=run_id, now=clock())
    record_ids = sorted({r.record_id for r in requests})
    texts = feature_store.fetch(record_ids) if record_ids else {}
    found = [record_id for record_id in record_ids if record_id in texts]
    started = time.perf_counter()
    results = model_client.predict([texts[i] for i in found], parameters) if found else []
    model_seconds = time.perf_counter() - started
    answers: dict[int, Prediction] = {}
    refused: dict[int, str] = {}
    for record_id, result in zip(found, results, strict=True):
        if isinstance(result, RefusedText):
            refused[record_id] = f"the model server refused record {record_id}: {result.reason}"
        else:
            answers[record_id] = result
    waiting, dead = _settle_batch(
        engine,
        batch_key,
        requests,
        BatchAnswers(answers, refused),
        model_name=model_name,
        run_id=run_id,
        feature_wait=feature_wait,
        now=clock(),
    )
    return BatchOutcome(
        batch_key=batch_key,
        requests=len(requests),
        records=len(record_ids),
        predicted=sorted(answers),
        waiting=waiting,
        dead_lettered=dead,
        model_seconds=model_seconds,
        label_counts=dict(Counter(p.labels[0] for p in answers.values() if p.labels)),
        refused=len(refused),
    )


def batch_record_ids(engine: Engine, batch_key: str) -> list[int]:
    """Distinct record ids of the batch's done requests: the records it must have predicted."""
    table = db.prediction_requests
    with engine.connect() as connection:
        return list(
            connection.execute(
                sa.select(table.c.record_id)
                .where(table.c.batch_key == batch_key, table.c.status == DONE)
                .distinct()
                .order_by(table.c.record_id)
            ).scalars()
        )


def read_predictions(
    engine: Engine, record_ids: Iterable[int], *, model_name: str
) -> dict[int, Prediction]:
    """Stored predictions of ``model_name`` for the given records."""
    table = db.predictions
    found: dict[int, Prediction] = {}
    with engine.connect() as connection:
        for chunk in _chunks(sorted(set(record_ids)), IN_CHUNK):
            rows = connection.execute(
                sa.select(
                    table.c.record_id, table.c.sequence, table.c.labels, table.c.scores
                ).where(table.c.model == model_name, table.c.record_id.in_(chunk))
            )
            found.update(
                {row.record_id: Prediction(row.sequence, row.labels, row.scores) for row in rows}
            )
    return found


def settled_batches(engine: Engine, batch_keys: Sequence[str]) -> list[str]:
    """Those of ``batch_keys`` that no run or reconcile will touch again (succeeded or dead)."""
    table = db.prediction_batches
    settled: list[str] = []
    with engine.connect() as connection:
        for chunk in _chunks(list(batch_keys), IN_CHUNK):
            settled += connection.execute(
                sa.select(table.c.batch_key).where(
                    table.c.batch_key.in_(chunk), table.c.status.in_([SUCCEEDED, DEAD_LETTERED])
                )
            ).scalars()
    return sorted(settled)


def old_settled_batches(engine: Engine, *, before: datetime, limit: int) -> list[str]:
    """Settled batches created before ``before``, oldest first, at most ``limit``."""
    table = db.prediction_batches
    with engine.connect() as connection:
        return list(
            connection.execute(
                sa.select(table.c.batch_key)
                .where(
                    table.c.created_at < before,
                    table.c.status.in_([SUCCEEDED, DEAD_LETTERED]),
                )
                .order_by(table.c.batch_key)
                .limit(limit)
            ).scalars()
        )


def prune_settled(engine: Engine, batch_keys: Sequence[str]) -> tuple[int, int]:
    """Delete the finished ledger rows of settled batches; returns (requests, batches) deleted.

    Predictions and dead letters are never touched: each prediction row keeps its batch key and
    run id, which is the lineage that outlives the ledger. A request still waiting for features
    keeps its row, and so does the batch it points to.
    """
    requests, batches = db.prediction_requests, db.prediction_batches
    deleted_requests = deleted_batches = 0
    for chunk in _chunks(settled_batches(engine, batch_keys), IN_CHUNK):
        with engine.begin() as connection:
            deleted_requests += connection.execute(
                requests.delete().where(
                    requests.c.batch_key.in_(chunk), requests.c.status.in_([DONE, DEAD_LETTERED])
                )
            ).rowcount
            still_used = sa.select(requests.c.batch_key).where(requests.c.batch_key.in_(chunk))
            deleted_batches += connection.execute(
                batches.delete().where(
                    batches.c.batch_key.in_(chunk), batches.c.batch_key.not_in(still_used)
                )
            ).rowcount
    return deleted_requests, deleted_batches


REPLAY_CHUNK = 1000


@dataclass(frozen=True)
class DeadLetterFilter:
    """Which open dead letters a command means: all, those whose reason contains a text, or ids."""

    reason: str | None = None
    ids: Sequence[int] | None = None

    def clauses(self) -> list[sa.ColumnElement[bool]]:
        table = db.dead_letters
        clauses: list[sa.ColumnElement[bool]] = [table.c.resolved_at.is_(None)]
        if self.reason:
            clauses.append(table.c.reason.contains(self.reason, autoescape=True))
        if self.ids is not None:
            clauses.append(table.c.id.in_(list(self.ids)))
        return clauses


@dataclass
class ReplayReport:
    """What ``replay_dead_letters`` did: re-published dead letters and the message ids they got."""

    replayed: int = 0
    message_ids: list[str] = field(default_factory=list)
    # Open dead letters that name no record (malformed messages): nothing to ask for again.
    not_replayable: int = 0
    # Open dead letters matching the filter that were replayed before (never replayed twice).
    already_replayed: int = 0


def _claim_replays(
    engine: Engine, which: DeadLetterFilter, *, now: datetime, limit: int
) -> list[tuple[int, int]]:
    """Mark up to ``limit`` replayable dead letters as replayed; returns (id, record id) pairs.

    The claim is one UPDATE … WHERE replayed_at IS NULL, so two replays running at once never
    claim the same dead letter.
    """
    table = db.dead_letters
    candidates = (
        sa.select(table.c.id)
        .where(*which.clauses(), table.c.replayed_at.is_(None), table.c.record_id.is_not(None))
        .order_by(table.c.id)
        .limit(limit)
        .scalar_subquery()
    )
    with engine.begin() as connection:
        rows = connection.execute(
            sa.update(table)
            .where(table.c.id.in_(candidates), table.c.replayed_at.is_(None))
            .values(replayed_at=now)
            .returning(table.c.id, table.c.record_id)
        ).all()
    return sorted((row.id, row.record_id) for row in rows)


def _count_dead_letters(engine: Engine, *clauses: sa.ColumnElement[bool]) -> int:
    table = db.dead_letters
    with engine.connect() as connection:
        return connection.execute(
            sa.select(sa.func.count()).select_from(table).where(*clauses)
        ).scalar_one()


def replay_dead_letters(
    engine: Engine,
    queue: RequestQueue,
    which: DeadLetterFilter,
    *,
    now: datetime,
    chunk: int = REPLAY_CHUNK,
) -> ReplayReport:
    """Publish a request again for each open dead letter that names a record, once.

    A replayed dead letter keeps ``replayed_at`` and the new message id, so running the command
    again publishes nothing new for it; when its record is predicted it is resolved as any other.
    If publishing fails, the chunk's claim is released and the error raised: nothing is marked
    replayed that was not published. Works in chunks of ``chunk``: memory stays bounded.
    """
    table = db.dead_letters
    report = ReplayReport()
    while True:
        claimed = _claim_replays(engine, which, now=now, limit=chunk)
        if not claimed:
            break
        payloads = [json.dumps({"id": str(record_id)}).encode() for _, record_id in claimed]
        try:
            message_ids = queue.publish(payloads)
        except BaseException:
            with engine.begin() as connection:
                connection.execute(
                    sa.update(table)
                    .where(table.c.id.in_([dead_id for dead_id, _ in claimed]))
                    .values(replayed_at=None)
                )
            raise
        with engine.begin() as connection:
            connection.execute(
                sa.update(table)
                .where(table.c.id == sa.bindparam("dead_id"))
                .values(replay_message_id=sa.bindparam("new_id")),
                [
                    {"dead_id": dead_id, "new_id": message_id}
                    for (dead_id, _), message_id in zip(claimed, message_ids, strict=True)
                ],
            )
        report.replayed += len(claimed)
        if len(report.message_ids) < 2 * chunk:
            report.message_ids += message_ids
    report.not_replayable = _count_dead_letters(
        engine, *which.clauses(), table.c.record_id.is_(None)
    )
    report.already_replayed = (
        _count_dead_letters(engine, *which.clauses(), table.c.replayed_at.is_not(None))
        - report.replayed
    )
    return report
