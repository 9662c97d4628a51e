"""Dead letters: what will never become a prediction, kept with its payload and the reason.

Malformed messages (from the intake), requests whose record never reached the feature store,
and the requests of a batch the model server refused or that ran out of attempts all end here,
each charged to its own row; ``batchinfer dead-letters`` lists them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy import Connection, Engine

from batchinfer_dagster import db
from batchinfer_dagster.chunks import chunked
from batchinfer_dagster.ledger.states import (
    BatchStatus,
    DeadLetterSource,
    RequestStatus,
    may_become,
)

UNKNOWN_RECORD = "unknown record id"


def dead_letter_requests(
    connection: Connection, rows: Sequence[sa.Row], reason: str, now: datetime
) -> None:
    """Move request rows (message_id, record_id) to dead letters with ``reason``."""
    if not rows:
        return
    table = db.prediction_requests
    for chunk in chunked([row.message_id for row in rows], db.IN_CHUNK):
        connection.execute(
            sa.update(table)
            .where(
                table.c.message_id.in_(chunk),
                table.c.status.in_(may_become(RequestStatus.DEAD_LETTERED)),
            )
            .values(status=RequestStatus.DEAD_LETTERED, error=reason, updated_at=now)
        )
    connection.execute(
        db.dead_letters.insert(),
        [
            {
                "source": DeadLetterSource.LEDGER,
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
                requests.c.batch_key == batch_key, requests.c.status == RequestStatus.QUEUED
            )
        ).all()
        dead_letter_requests(connection, rows, reason, now)
        connection.execute(
            sa.update(batches)
            .where(
                batches.c.batch_key == batch_key,
                batches.c.status.in_(may_become(BatchStatus.DEAD_LETTERED)),
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
    connection: Connection, invalid: dict[str, tuple[bytes, str]], now: datetime
) -> list[dict[str, object]]:
    """Dead-letter rows for malformed messages (by ledger key) not dead-lettered before."""
    known = db.existing_values(connection, db.dead_letters.c.message_id, list(invalid))
    return [
        {
            "source": DeadLetterSource.SENSOR,
            "message_id": key,
            "payload": data.decode("utf-8", errors="backslashreplace"),
            "reason": reason,
            "received_at": now,
        }
        for key, (data, reason) in invalid.items()
        if key not in known
    ]
