"""The request ledger (design §3): what the sensor and the prediction runs write, Dagster-free.

The database is the source of truth and the queue only transport, so every step that must not be
lost or repeated is one transaction here: the sensor's intake of a pull, the re-batching of
requests that waited for features, a run's settling of its batch, and the dead-lettering of what
can never succeed. Nothing here imports Dagster, so the CLI and tests use it directly.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Connection, Engine
from sqlalchemy.dialects import postgresql, sqlite

from batchinfer_dagster import db
from batchinfer_dagster.clients.queue import ReceivedMessage
from batchinfer_dagster.partitions import new_batch_key
from batchinfer_protocol.zero_shot import Prediction

MAX_PAYLOAD_BYTES = 10 * 1024
MAX_RECORD_ID = 2**63 - 1
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


def _new_batches(
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
                    "status": QUEUED,
                    "attempts": attempts,
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
    by_key: dict[str, ReceivedMessage] = {}
    for message in messages:
        by_key.setdefault(request_key(queue, message), message)
    valid: dict[str, int] = {}
    invalid: dict[str, tuple[ReceivedMessage, str]] = {}
    for key, message in by_key.items():
        try:
            valid[key] = parse_record_id(message.data)
        except InvalidRequestError as exc:
            invalid[key] = (message, str(exc))

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
                "payload": message.data.decode("utf-8", errors="backslashreplace"),
                "reason": reason,
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


def create_batches(
    engine: Engine, record_ids: Sequence[int], *, source: str, batch_size: int, now: datetime
) -> list[str]:
    """Requests for chosen record ids, written straight to the ledger (no queue).

    The batches have no run yet: the sensor's next tick requests one per batch
    (``request_new_batches``), exactly as for batches that came through the queue.
    """
    for record_id in record_ids:
        if not 0 < record_id <= MAX_RECORD_ID:
            raise InvalidRequestError(f"record id {record_id!r} is not a positive integer")
    prefix = f"{source}:{uuid.uuid4().hex}"
    groups = [
        [(f"{prefix}:{index}:{position}", record_id) for position, record_id in enumerate(group)]
        for index, group in enumerate(_chunks(list(record_ids), batch_size))
    ]
    with engine.begin() as connection:
        batch_keys = _new_batches(connection, len(groups), now, attempts=0)
        rows = _queued_request_rows(batch_keys, groups, now)
        if rows:
            connection.execute(db.prediction_requests.insert(), rows)
    return batch_keys


def request_new_batches(engine: Engine, *, now: datetime, limit: int) -> dict[str, int]:
    """Queued batches that never had a run requested, now counted as attempt 1.

    Returns their keys with the attempt, oldest first, at most ``limit``.
    """
    table = db.prediction_batches
    with engine.connect() as connection:
        keys = list(
            connection.execute(
                sa.select(table.c.batch_key)
                .where(table.c.status == QUEUED, table.c.attempts == 0)
                .order_by(table.c.batch_key)
                .limit(limit)
            ).scalars()
        )
    return retry_batches(engine, keys, now=now) if keys else {}


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
    connection: Connection, rows: Sequence[sa.Row], reason: str, now: datetime
) -> None:
    """Move request rows (message_id, record_id) to dead letters with ``reason``."""
    if not rows:
        return
    table = db.prediction_requests
    for chunk in _chunks([row.message_id for row in rows], IN_CHUNK):
        connection.execute(
            sa.update(table)
            .where(table.c.message_id.in_(chunk))
            .values(status=DEAD_LETTERED, error=reason, updated_at=now)
        )
    connection.execute(
        db.dead_letters.insert(),
        [
            {
                "source": LEDGER_SOURCE,
                "message_id": row.message_id,
                "payload": json.dumps({"id": str(row.record_id)}),
                "reason": reason,
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
                "sequence": answer.sequence,
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
class Settlement:
    """What a run learned about its batch, settled in one transaction by ``settle_batch``.

    ``answers`` holds a prediction by record id for every record that had features; ``model``
    is the id the model server reported, the predictions' lineage key.
    """

    batch_key: str
    run_id: str
    requests: Sequence[BatchRequest]
    model: str
    answers: Mapping[int, Prediction]
    feature_wait: timedelta
    now: datetime


def settle_batch(engine: Engine, settlement: Settlement) -> tuple[int, int]:
    """One transaction: predictions, request statuses and the batch's success.

    Returns how many requests now wait for features and how many became dead letters.
    """
    answers, now = settlement.answers, settlement.now
    done = [r.message_id for r in settlement.requests if r.record_id in answers]
    missing = [
        r for r in settlement.requests if r.record_id not in answers and r.status != DEAD_LETTERED
    ]
    table = db.prediction_requests
    with engine.begin() as connection:
        write_predictions(
            connection,
            answers,
            model_name=settlement.model,
            batch_key=settlement.batch_key,
            run_id=settlement.run_id,
            now=now,
        )
        for chunk in _chunks(done, IN_CHUNK):
            connection.execute(
                sa.update(table)
                .where(table.c.message_id.in_(chunk))
                .values(status=DONE, error=None, updated_at=now)
            )
        waiting, dead = _settle_missing(
            connection, missing, feature_wait=settlement.feature_wait, now=now
        )
        connection.execute(
            sa.update(db.prediction_batches)
            .where(db.prediction_batches.c.batch_key == settlement.batch_key)
            .values(status=SUCCEEDED, updated_at=now)
        )
    return waiting, dead


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
