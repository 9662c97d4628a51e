"""Reconcile: another run for a batch whose run failed or never happened, or give up on it.

The whole step lives here; the one thing only Dagster knows, which batches have an unfinished
run, comes in as ``in_flight`` (the sensor passes a query of its instance). A batch is looked at
when it failed, or when it was queued or running without news for ``stale_after``: its run is
then finished, waiting in Dagster's run queue, or was never created (the daemon died mid-tick).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy import Engine

from batchinfer_dagster import db
from batchinfer_dagster.chunks import chunked
from batchinfer_dagster.ledger.dead_letters import dead_letter_batch, last_error
from batchinfer_dagster.ledger.intake import count_attempt
from batchinfer_dagster.ledger.states import BatchStatus

# Batches looked at per tick: bounds the tick at any backlog.
RECONCILE_LIMIT = 200
STALE_AFTER = timedelta(minutes=2)


@dataclass(frozen=True)
class BatchState:
    """A batch as the reconcile step sees it."""

    batch_key: str
    status: str
    attempts: int
    run_id: str | None


# Given candidates, the keys of those with an unfinished run (queued, starting or running).
InFlight = Callable[[Sequence[BatchState]], set[str]]


@dataclass(frozen=True)
class ReconcileOutcome:
    """Batches given another attempt (key → attempt number) and batches given up on."""

    retried: dict[str, int] = field(default_factory=dict)
    dead_lettered: list[str] = field(default_factory=list)


def batches_to_reconcile(
    engine: Engine, *, now: datetime, stale_after: timedelta, limit: int
) -> list[BatchState]:
    """Failed batches, and queued or running ones untouched for ``stale_after``, oldest first."""
    table = db.prediction_batches
    with engine.connect() as connection:
        rows = connection.execute(
            sa.select(table.c.batch_key, table.c.status, table.c.attempts, table.c.run_id)
            .where(
                sa.or_(
                    table.c.status == BatchStatus.FAILED,
                    sa.and_(
                        table.c.status.in_([BatchStatus.QUEUED, BatchStatus.RUNNING]),
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
        for chunk in chunked(batch_keys, db.IN_CHUNK):
            connection.execute(
                sa.update(table).where(table.c.batch_key.in_(chunk)).values(updated_at=now)
            )


def reconcile(
    engine: Engine,
    in_flight: InFlight,
    *,
    max_attempts: int,
    now: datetime,
    stale_after: timedelta = STALE_AFTER,
    limit: int = RECONCILE_LIMIT,
) -> ReconcileOutcome:
    """Give failed or lost batches another attempt, or dead-letter them after ``max_attempts``.

    Batches with a run in flight are only touched; the others are queued again with one more
    attempt, or, out of attempts, become dead letters with the last error of their runs.
    """
    candidates = batches_to_reconcile(engine, now=now, stale_after=stale_after, limit=limit)
    if not candidates:
        return ReconcileOutcome()
    running = in_flight(candidates)
    touch_batches(engine, sorted(running), now=now)
    settled = [c for c in candidates if c.batch_key not in running]
    retried = count_attempt(
        engine, [c.batch_key for c in settled if c.attempts < max_attempts], now=now
    )
    exhausted = [c for c in settled if c.attempts >= max_attempts]
    for batch in exhausted:
        error = last_error(engine, batch.batch_key) or "its runs never finished it"
        reason = f"batch {batch.batch_key} failed after {batch.attempts} attempts: {error}"
        dead_letter_batch(engine, batch.batch_key, reason=reason, now=now)
    return ReconcileOutcome(retried=retried, dead_lettered=[b.batch_key for b in exhausted])
