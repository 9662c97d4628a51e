"""Dead letters: what will never become a prediction, kept with its payload and the reason.

Malformed messages (from the intake), requests whose record never reached the feature store,
records the model server refused, the requests of a batch that ran out of attempts, and what
Pub/Sub dead-lettered itself all end here, each charged to its own row; ``batchinfer
dead-letters`` lists them. A dead letter is open until its record is predicted (resolved, by
that run, in the same transaction) and may be replayed once (``replay.py``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Connection, Engine

from batchinfer_dagster import db
from batchinfer_dagster.chunks import chunked
from batchinfer_dagster.ledger.messages import (
    ReceivedMessage,
    record_id_of_payload,
    request_key,
    request_payload,
)
from batchinfer_dagster.ledger.rollout_lock import locked_rollout_status
from batchinfer_dagster.ledger.states import (
    BatchStatus,
    DeadLetterSource,
    RequestStatus,
    RolloutStatus,
    may_leave_for,
)

UNKNOWN_RECORD = "unknown record id"
MAX_ERROR_CHARS = 2000
# ``dead_letters.resolved_by_run`` of a discarded rollout's dead letters.
DISCARDED_BY = "rollout discarded"


def dead_letter_requests(
    connection: Connection,
    rows: Sequence[Any],
    reason: str,
    now: datetime,
    *,
    source: DeadLetterSource = DeadLetterSource.LEDGER,
    reasons: Mapping[str, str] | None = None,
) -> None:
    """Move request rows (message_id, record_id) to dead letters with ``reason``.

    ``reasons`` (by message id) overrides ``reason`` for single requests: a record the model
    server refused carries the server's own reason. A request of a running rollout's batch is
    charged to its rollout (``dead_letters.rollout``), whichever path dead-letters it. A closed
    rollout's dead letter is settled as its closing settled the others: a promoted rollout's is
    ordinary (its candidate is current now), a discarded rollout's is written resolved
    (``DISCARDED_BY``), so a batch that runs out of attempts after a discard leaves no open
    dead letter charged to it.
    """
    if not rows:
        return
    reasons = reasons or {}
    of_rollouts = rollouts_of_requests(connection, [row.message_id for row in rows])
    rollouts = {
        key: candidate
        for key, (candidate, status) in of_rollouts.items()
        if status != RolloutStatus.PROMOTED
    }
    discarded = {
        key for key, (_, status) in of_rollouts.items() if status == RolloutStatus.DISCARDED
    }
    table = db.prediction_requests
    connection.execute(
        sa.update(table)
        .where(
            table.c.message_id == sa.bindparam("key"),
            may_leave_for(table.c.status, RequestStatus.DEAD_LETTERED),
        )
        .values(status=RequestStatus.DEAD_LETTERED, error=sa.bindparam("why"), updated_at=now),
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
                "payload": request_payload(row.record_id).decode(),
                "reason": db.storable_text(reasons.get(row.message_id, reason)),
                "record_id": row.record_id,
                "received_at": now,
                "rollout": rollouts.get(row.message_id),
                "resolved_at": now if row.message_id in discarded else None,
                "resolved_by_run": DISCARDED_BY if row.message_id in discarded else None,
            }
            for row in rows
        ],
    )


def rollouts_of_requests(
    connection: Connection, message_ids: Sequence[str]
) -> dict[str, tuple[str, RolloutStatus]]:
    """The candidate digest and rollout status of each of ``message_ids`` that a rollout's
    batch holds; each rollout's row locked until the transaction ends (``locked_rollout_status``),
    so a discard or promote cannot commit between this read and the dead letters written by it.
    """
    requests, batches = db.prediction_requests, db.rollout_batches
    candidates: dict[str, str] = {}
    for chunk in chunked(sorted(set(message_ids)), db.IN_CHUNK):
        candidates.update(
            (message_id, candidate)
            for message_id, candidate in connection.execute(
                sa.select(requests.c.message_id, batches.c.candidate)
                .join(batches, batches.c.batch_key == requests.c.batch_key)
                .where(requests.c.message_id.in_(chunk))
            )
        )
    statuses = {
        candidate: locked_rollout_status(connection, candidate)
        for candidate in sorted(set(candidates.values()))
    }
    return {
        message_id: (candidate, RolloutStatus(statuses[candidate]))
        for message_id, candidate in candidates.items()
        if statuses[candidate] is not None
    }


def dead_letter_batch(engine: Engine, batch_key: str, *, reason: str, now: datetime) -> int:
    """Give up on a batch: its queued requests become dead letters; returns how many.

    The queued requests are read locked (``FOR UPDATE``; SQLite: its write lock, taken first),
    so a late run of the batch settling at the same time either committed before (its requests
    are done, not dead-lettered) or waits for this commit: a predicted record never gets an
    open dead letter of this batch.
    """
    requests = db.prediction_requests
    batches = db.prediction_batches
    with engine.begin() as connection:
        db.hold_sqlite_write_lock(connection)
        rows = connection.execute(
            sa.select(requests.c.message_id, requests.c.record_id)
            .where(requests.c.batch_key == batch_key, requests.c.status == RequestStatus.QUEUED)
            .with_for_update()
        ).all()
        dead_letter_requests(connection, rows, reason, now)
        connection.execute(
            sa.update(batches)
            .where(
                batches.c.batch_key == batch_key,
                may_leave_for(batches.c.status, BatchStatus.DEAD_LETTERED),
            )
            .values(status=BatchStatus.DEAD_LETTERED, updated_at=now)
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


def invalid_message_rows(
    connection: Connection, invalid: Mapping[str, tuple[ReceivedMessage, str]], now: datetime
) -> list[dict[str, object]]:
    """Dead-letter rows for malformed messages (by ledger key) not dead-lettered before."""
    known = db.existing_values(connection, db.dead_letters.c.message_id, list(invalid))
    return [
        {
            "source": DeadLetterSource.SENSOR,
            "message_id": key,
            "payload": db.storable_text(message.data),
            "reason": db.storable_text(reason),
            "delivery_attempts": message.delivery_attempt,
            "received_at": now,
        }
        for key, (message, reason) in invalid.items()
        if key not in known
    ]


def _predicted_by(connection: Connection, record_ids: Sequence[int]) -> dict[int, str | None]:
    """The run that wrote each record's newest prediction (of any model), for records with one."""
    table = db.predictions
    found: dict[int, str | None] = {}
    for chunk in chunked(sorted(set(record_ids)), db.IN_CHUNK):
        rows = connection.execute(
            sa.select(table.c.record_id, table.c.run_id)
            .where(table.c.record_id.in_(chunk))
            .order_by(table.c.updated_at)
        )
        found.update({row.record_id: row.run_id for row in rows})
    return found


def record_queue_dead_letters(
    engine: Engine,
    messages: Sequence[ReceivedMessage],
    *,
    queue: str,
    now: datetime,
) -> int:
    """Write the messages a queue gave up on into ``dead_letters``; returns how many.

    The queue hands them back (``RequestQueue.pull_dead_letters``: Pub/Sub's dead-letter
    subscription, the local queue's exhausted rows) and acks them after this commit, so the
    ledger is the only writer of ``dead_letters``. Each keeps its payload, its delivery attempts
    and the record it asks for; ``queue`` (the queue's kind) picks the source and reason. A
    message read back twice (its ack was lost) is written once. A record that was predicted
    anyway (the sensor wrote the ledger, but every ack of the message failed) is written as
    resolved.
    """
    rows: dict[str, dict[str, Any]] = {}
    for message in messages:
        key = request_key(f"{queue}-dead-letter", message)
        attempts = message.delivery_attempt or None
        pubsub = queue == "pubsub"
        rows.setdefault(
            key,
            {
                "source": DeadLetterSource.PUBSUB_DEAD_LETTER if pubsub else DeadLetterSource.QUEUE,
                "message_id": key,
                "payload": db.storable_text(message.data),
                "reason": (
                    f"Pub/Sub dead-lettered the message after {attempts or 'its maximum'} "
                    "delivery attempts without an acknowledgement"
                    if pubsub
                    else f"not acknowledged after {attempts} deliveries"
                ),
                "record_id": record_id_of_payload(message.data),
                "delivery_attempts": attempts,
                "received_at": now,
                "resolved_at": None,
                "resolved_by_run": None,
            },
        )
    with engine.begin() as connection:
        known = db.existing_values(connection, db.dead_letters.c.message_id, list(rows))
        new = [row for key, row in rows.items() if key not in known]
        predicted = _predicted_by(
            connection, [r["record_id"] for r in new if r["record_id"] is not None]
        )
        for row in new:
            if row["record_id"] in predicted:
                row["resolved_at"] = now
                row["resolved_by_run"] = predicted[row["record_id"]]
        if new:
            connection.execute(db.dead_letters.insert(), new)
    return len(new)


def resolve_dead_letters(
    connection: Connection,
    record_ids: Sequence[int],
    *,
    run_id: str,
    now: datetime,
    rollout: str | None = None,
) -> int:
    """Mark the open dead letters of records that now have a prediction as resolved by ``run_id``.

    Called in the transaction that writes those predictions, so a dead letter is never open for a
    predicted record (nor resolved for one whose prediction was rolled back). ``rollout``: the
    predictions are that candidate's, which resolve its dead letters only; None (current
    predictions) resolves the ordinary ones only, so a rollout's refused record stays counted
    in its report until the candidate predicts it. Returns how many.
    """
    table = db.dead_letters
    resolved = 0
    of_rollout = table.c.rollout.is_(None) if rollout is None else table.c.rollout == rollout
    for chunk in chunked(sorted(set(record_ids)), db.IN_CHUNK):
        resolved += connection.execute(
            sa.update(table)
            .where(table.c.record_id.in_(chunk), table.c.resolved_at.is_(None), of_rollout)
            .values(resolved_at=now, resolved_by_run=run_id)
        ).rowcount
    return resolved
