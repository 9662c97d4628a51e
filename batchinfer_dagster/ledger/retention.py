"""Ledger retention: settled batches, and deleting their finished rows.

Predictions and dead letters are never deleted here; the Dagster side (``retention.py``) prunes
the batch partitions with the same notion of "settled".
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy import Engine

from batchinfer_dagster import db
from batchinfer_dagster.chunks import chunked
from batchinfer_dagster.ledger.states import (
    FINAL_REQUEST_STATUSES,
    SETTLED_BATCH_STATUSES,
)


def settled_batches(engine: Engine, batch_keys: Sequence[str]) -> list[str]:
    """Those of ``batch_keys`` that no run or reconcile will touch again (succeeded or dead)."""
    table = db.prediction_batches
    settled: list[str] = []
    with engine.connect() as connection:
        for chunk in chunked(batch_keys, db.IN_CHUNK):
            settled += connection.execute(
                sa.select(table.c.batch_key).where(
                    table.c.batch_key.in_(chunk), table.c.status.in_(sorted(SETTLED_BATCH_STATUSES))
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
                    table.c.status.in_(sorted(SETTLED_BATCH_STATUSES)),
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

    Each chunk's batches are read settled and locked in the transaction that deletes (``FOR
    UPDATE``; SQLite: its write lock, taken first): a batch re-materialized meanwhile (its run
    marks it running) is either seen running and kept, or waits for this commit and starts with
    what is left; its requests are never deleted under a run that read them.
    """
    requests, batches = db.prediction_requests, db.prediction_batches
    deleted_requests = deleted_batches = 0
    for chunk in chunked(settled_batches(engine, batch_keys), db.IN_CHUNK):
        with engine.begin() as connection:
            db.hold_sqlite_write_lock(connection)
            settled = list(
                connection.execute(
                    sa.select(batches.c.batch_key)
                    .where(
                        batches.c.batch_key.in_(chunk),
                        batches.c.status.in_(sorted(SETTLED_BATCH_STATUSES)),
                    )
                    .with_for_update()
                ).scalars()
            )
            if not settled:
                continue
            deleted_requests += connection.execute(
                requests.delete().where(
                    requests.c.batch_key.in_(settled),
                    requests.c.status.in_(sorted(FINAL_REQUEST_STATUSES)),
                )
            ).rowcount
            still_used = sa.select(requests.c.batch_key).where(requests.c.batch_key.in_(settled))
            deleted_batches += connection.execute(
                batches.delete().where(
                    batches.c.batch_key.in_(settled), batches.c.batch_key.not_in(still_used)
                )
            ).rowcount
    return deleted_requests, deleted_batches
