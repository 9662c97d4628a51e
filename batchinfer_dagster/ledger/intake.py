"""Intake: requests into the ledger, grouped into ledger batches, in one transaction each.

The sensor's pull (``ingest_messages``), requests for chosen records from the launchpad
(``create_batches``), the first run request of such batches (``request_new_batches``).
Requests waiting for features join new batches through ``feature_wait.recheck_waiting``.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Connection, Engine

from batchinfer_dagster import db
from batchinfer_dagster.chunks import chunked
from batchinfer_dagster.ledger.batch_keys import new_batch_key
from batchinfer_dagster.ledger.closing import BatchClosing
from batchinfer_dagster.ledger.dead_letters import MAX_ERROR_CHARS, invalid_message_rows
from batchinfer_dagster.ledger.messages import (
    MAX_RECORD_ID,
    InvalidRequestError,
    ReceivedMessage,
    parse_record_id,
    request_key,
)
from batchinfer_dagster.ledger.states import BatchStatus, RequestStatus, may_leave_for


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
    # Accepted requests left without a batch: the closing rule closes them on a later tick.
    pending: int = 0


def _queued_batches_of(connection: Connection, message_keys: Sequence[str]) -> dict[str, int]:
    requests = db.prediction_requests
    batches = db.prediction_batches
    found: dict[str, int] = {}
    for chunk in chunked(message_keys, db.IN_CHUNK):
        rows = connection.execute(
            sa.select(batches.c.batch_key, batches.c.attempts)
            .join(requests, requests.c.batch_key == batches.c.batch_key)
            .where(requests.c.message_id.in_(chunk), batches.c.status == BatchStatus.QUEUED)
            .distinct()
        )
        found.update({row.batch_key: row.attempts for row in rows})
    return found


def new_batches(
    connection: Connection, count: int, now: datetime, *, attempts: int = 1
) -> list[str]:
    """Insert ``count`` queued batch rows; ``attempts`` 1: their first run is being requested,
    0: no run yet (``request_new_batches`` asks for it)."""
    keys = [new_batch_key(now) for _ in range(count)]
    if keys:
        connection.execute(
            db.prediction_batches.insert(),
            [
                {
                    "batch_key": key,
                    "created_at": now,
                    "updated_at": now,
                    "status": BatchStatus.QUEUED,
                    "attempts": attempts,
                    "run_id": None,
                }
                for key in keys
            ],
        )
    return keys


def queued_request_rows(
    batch_keys: Sequence[str], groups: Sequence[Sequence[tuple[str, int]]], now: datetime
) -> list[dict[str, Any]]:
    """Ledger rows for ``(message key, record id)`` groups, one group per new batch."""
    return [
        {
            "message_id": message_id,
            "record_id": record_id,
            "batch_key": batch_key,
            "status": RequestStatus.QUEUED,
            "attempts": 0,
            "received_at": now,
            "updated_at": now,
        }
        for batch_key, group in zip(batch_keys, groups, strict=True)
        for message_id, record_id in group
    ]


def message_error(error: Exception) -> str:
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
            invalid[key] = (message, message_error(exc))
            continue
        if key in valid or key in invalid:
            continue
        try:
            valid[key] = parse_record_id(message.data)
        except Exception as exc:  # charged to this message alone
            invalid[key] = (message, message_error(exc))
    return valid, invalid


def ingest_messages(
    engine: Engine,
    messages: Sequence[ReceivedMessage],
    *,
    queue: str,
    batch_size: int,
    now: datetime,
    max_wait: timedelta = timedelta(0),
    drained: bool = False,
) -> IngestResult:
    """Write a pull into the ledger in one transaction: requests, the batches that close, dead
    letters.

    New requests join the pending ones (accepted earlier, no batch yet); the batches that the
    closing rule (``closing.py``: ``batch_size`` requests, or the oldest waited ``max_wait``)
    closes are written with their requests, the rest stay pending for a later tick. ``drained``:
    the pull found the queue empty behind what it took (the sensor's ``pull_requests``), so
    the pending rest closes now. An empty pull still closes what is due. A message the ledger
    already holds (a redelivery after a crash before the ack) is skipped, so acking everything
    afterwards is safe. Malformed messages become dead letters once.
    """
    valid, invalid = classify_messages(messages, queue=queue)
    closing = BatchClosing(max_size=batch_size, max_wait=max_wait)
    with engine.begin() as connection:
        known = db.existing_values(connection, db.prediction_requests.c.message_id, list(valid))
        resumed = _queued_batches_of(connection, sorted(known))
        new = [(key, record_id) for key, record_id in valid.items() if key not in known]
        pending = _pending_requests(connection)
        received = [row.received_at for row in pending] + [now] * len(new)
        sizes = closing.sizes(received, now, drained=drained)
        batch_keys = new_batches(connection, len(sizes), now)
        # The batch of each position in arrival order (pending first, then this pull).
        key_of_position = [
            key for key, size in zip(batch_keys, sizes, strict=True) for _ in range(size)
        ]
        for batch_key, group in _closing_pending(pending, key_of_position).items():
            for chunk in chunked(group, db.IN_CHUNK):
                connection.execute(
                    sa.update(db.prediction_requests)
                    .where(
                        db.prediction_requests.c.message_id.in_(chunk),
                        db.prediction_requests.c.batch_key.is_(None),
                    )
                    .values(batch_key=batch_key, updated_at=now)
                )
        offset = len(pending)
        rows = [
            {
                "message_id": message_id,
                "record_id": record_id,
                "batch_key": (
                    key_of_position[offset + index]
                    if offset + index < len(key_of_position)
                    else None
                ),
                "status": RequestStatus.QUEUED,
                "attempts": 0,
                "received_at": now,
                "updated_at": now,
            }
            for index, (message_id, record_id) in enumerate(new)
        ]
        for chunk in chunked(rows, db.IN_CHUNK):
            db.insert_ignoring_conflicts(connection, db.prediction_requests, chunk)
        dead_rows = invalid_message_rows(connection, invalid, now)
        if dead_rows:
            connection.execute(db.dead_letters.insert(), dead_rows)
    return IngestResult(
        batch_keys=batch_keys,
        accepted=len(new),
        redelivered=len(valid) - len(new),
        dead_lettered=len(dead_rows),
        ack_ids=[message.ack_id for message in messages],
        resumed=resumed,
        pending=len(received) - len(key_of_position),
    )


# Pending requests one tick reads at most: far above a pull plus a batch, so a tick stays short.
PENDING_LIMIT = 100_000


def _pending_requests(connection: Connection) -> list[sa.Row]:
    """Accepted requests not in a batch yet, oldest first."""
    table = db.prediction_requests
    return connection.execute(
        sa.select(table.c.message_id, table.c.received_at)
        .where(table.c.batch_key.is_(None), table.c.status == RequestStatus.QUEUED)
        .order_by(table.c.received_at, table.c.message_id)
        .limit(PENDING_LIMIT)
    ).all()


def _closing_pending(
    pending: Sequence[sa.Row], key_of_position: Sequence[str]
) -> dict[str, list[str]]:
    """Message ids of the pending requests that close now, by their new batch key."""
    groups: dict[str, list[str]] = {}
    for row, batch_key in zip(pending, key_of_position, strict=False):
        groups.setdefault(batch_key, []).append(row.message_id)
    return groups


def create_batches(
    engine: Engine, record_ids: Sequence[int], *, source: str, batch_size: int, now: datetime
) -> list[str]:
    """Requests for chosen record ids, written straight to the ledger (no queue).

    The batches have no run yet: the sensor's next tick requests one per batch
    (``request_new_batches``), exactly as for batches that came through the queue.
    """
    with engine.begin() as connection:
        return write_batches(connection, record_ids, source=source, batch_size=batch_size, now=now)


def write_batches(
    connection: Connection,
    record_ids: Sequence[int],
    *,
    source: str,
    batch_size: int,
    now: datetime,
) -> list[str]:
    """``create_batches`` inside the caller's transaction (a rollout writes its own rows with
    them, so no run sees one of its batches without them)."""
    for record_id in record_ids:
        if not 0 < record_id <= MAX_RECORD_ID:
            raise InvalidRequestError(f"record id {record_id!r} is not a positive integer")
    prefix = f"{source}:{uuid.uuid4().hex}"
    groups = [
        [(f"{prefix}:{index}:{position}", record_id) for position, record_id in enumerate(group)]
        for index, group in enumerate(chunked(record_ids, batch_size))
    ]
    batch_keys = new_batches(connection, len(groups), now, attempts=0)
    rows = queued_request_rows(batch_keys, groups, now)
    if rows:
        connection.execute(db.prediction_requests.insert(), rows)
    return batch_keys


def count_attempt(
    engine: Engine, batch_keys: Sequence[str], *, now: datetime, charged: bool = True
) -> dict[str, int]:
    """Queue batches for one more run attempt; returns the new attempt number by batch key.

    ``charged=False``: the attempt that ended (its run interrupted by a stop of ``make run``)
    is not charged against the limit (``uncharged_attempts``); the new one still gets its own
    number, so its run has a run key of its own.
    """
    table = db.prediction_batches
    attempts: dict[str, int] = {}
    uncharged = table.c.uncharged_attempts + (0 if charged else 1)
    with engine.begin() as connection:
        for chunk in chunked(batch_keys, db.IN_CHUNK):
            connection.execute(
                sa.update(table)
                .where(
                    table.c.batch_key.in_(chunk),
                    may_leave_for(table.c.status, BatchStatus.QUEUED),
                )
                .values(
                    status=BatchStatus.QUEUED,
                    attempts=table.c.attempts + 1,
                    uncharged_attempts=uncharged,
                    # A new run request: its time without a run starts again.
                    unrun_seconds=None,
                    updated_at=now,
                )
            )
            rows = connection.execute(
                sa.select(table.c.batch_key, table.c.attempts).where(table.c.batch_key.in_(chunk))
            )
            attempts.update({row.batch_key: row.attempts for row in rows})
    return attempts


def request_new_batches(engine: Engine, *, now: datetime, limit: int) -> dict[str, int]:
    """Queued batches that never had a run requested, now counted as attempt 1.

    Returns their keys with the attempt, oldest first, at most ``limit``.
    """
    table = db.prediction_batches
    with engine.connect() as connection:
        keys = list(
            connection.execute(
                sa.select(table.c.batch_key)
                .where(table.c.status == BatchStatus.QUEUED, table.c.attempts == 0)
                .order_by(table.c.batch_key)
                .limit(limit)
            ).scalars()
        )
    return count_attempt(engine, keys, now=now) if keys else {}
