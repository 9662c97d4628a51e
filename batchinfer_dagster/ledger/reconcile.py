"""Reconcile: another run for a batch whose run failed or never happened, or give up on it.

The whole step lives here; what only Dagster knows, the state of each batch's current run, comes
in as ``current_runs`` (the sensor passes a query of its instance). A batch is looked at when it
failed, or when it was queued or running without news for ``RECHECK_AFTER``; then
- a run of it is unfinished (queued for its pool, starting, running): left alone;
- its current run finished without settling it (failed, canceled: e.g. ``make run`` stopped with
  Ctrl-C mid-run): retried at once;
- Dagster has no current run of it: retried only after ``stale_after``, the time the daemon has
  to turn a tick's run requests into runs (a tick that died before may have lost them).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum

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
# A queued or running batch is asked about again after this long without news.
RECHECK_AFTER = timedelta(seconds=10)


@dataclass(frozen=True)
class BatchState:
    """A batch as the reconcile step sees it."""

    batch_key: str
    status: str
    attempts: int
    run_id: str | None
    updated_at: datetime


class RunState(StrEnum):
    """What Dagster knows of a batch's current run."""

    IN_FLIGHT = "in_flight"  # queued for its pool, starting or running
    FINISHED = "finished"  # ended (failed, canceled, or succeeded without settling the batch)


# Given candidates, the state of the current run of those Dagster knows one of: the run of its
# current attempt (by run key), the run that started it, or any unfinished run of its partition.
# A batch absent from the answer has no run in Dagster.
CurrentRuns = Callable[[Sequence[BatchState]], dict[str, RunState]]


@dataclass(frozen=True)
class ReconcileOutcome:
    """Batches given another attempt (key → attempt number) and batches given up on."""

    retried: dict[str, int] = field(default_factory=dict)
    dead_lettered: list[str] = field(default_factory=list)


def batches_to_reconcile(
    engine: Engine, *, now: datetime, recheck_after: timedelta, limit: int
) -> list[BatchState]:
    """Failed batches, and queued or running ones (with a run requested) untouched for
    ``recheck_after``, oldest first."""
    table = db.prediction_batches
    with engine.connect() as connection:
        rows = connection.execute(
            sa.select(
                table.c.batch_key,
                table.c.status,
                table.c.attempts,
                table.c.run_id,
                table.c.updated_at,
            )
            .where(
                sa.or_(
                    table.c.status == BatchStatus.FAILED,
                    sa.and_(
                        table.c.status.in_([BatchStatus.QUEUED, BatchStatus.RUNNING]),
                        table.c.attempts >= 1,
                        # Or written more than that ahead: before the host clock stepped back.
                        sa.or_(
                            table.c.updated_at <= now - recheck_after,
                            table.c.updated_at > now + recheck_after,
                        ),
                    ),
                )
            )
            .order_by(table.c.updated_at)
            .limit(limit)
        ).all()
    return [
        BatchState(row.batch_key, row.status, row.attempts, row.run_id, row.updated_at)
        for row in rows
    ]


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
    current_runs: CurrentRuns,
    *,
    max_attempts: int,
    now: datetime,
    stale_after: timedelta = STALE_AFTER,
    recheck_after: timedelta = RECHECK_AFTER,
    limit: int = RECONCILE_LIMIT,
) -> ReconcileOutcome:
    """Give failed or lost batches another attempt, or dead-letter them after ``max_attempts``.

    Batches with a run in flight, and queued or running ones with no run yet but news within
    ``stale_after``, are only touched; the others (failed, their run finished without settling
    them, or never created) are queued again with one more attempt, or, out of attempts, become
    dead letters with the last error of their runs.
    """
    candidates = batches_to_reconcile(engine, now=now, recheck_after=recheck_after, limit=limit)
    if not candidates:
        return ReconcileOutcome()
    runs = current_runs(candidates)

    def waits(batch: BatchState) -> bool:
        state = runs.get(batch.batch_key)
        if state is RunState.IN_FLIGHT:
            return True
        if state is RunState.FINISHED or batch.status == BatchStatus.FAILED:
            return False
        # No run yet: the daemon may still make it, unless the batch was written longer ago than
        # ``stale_after``, or further ahead than that (before the host clock stepped back, which
        # would otherwise hold it for as long as the step).
        return now - stale_after < batch.updated_at <= now + stale_after

    # Only batches with a run in flight are touched: a batch still without a run keeps its
    # time, so it goes stale ``stale_after`` after it was written, however often it is looked at.
    in_flight = [c.batch_key for c in candidates if runs.get(c.batch_key) is RunState.IN_FLIGHT]
    touch_batches(engine, in_flight, now=now)
    settled = [c for c in candidates if not waits(c)]
    retried = count_attempt(
        engine, [c.batch_key for c in settled if c.attempts < max_attempts], now=now
    )
    exhausted = [c for c in settled if c.attempts >= max_attempts]
    for batch in exhausted:
        error = last_error(engine, batch.batch_key) or "its runs never finished it"
        reason = f"batch {batch.batch_key} failed after {batch.attempts} attempts: {error}"
        dead_letter_batch(engine, batch.batch_key, reason=reason, now=now)
    return ReconcileOutcome(retried=retried, dead_lettered=[b.batch_key for b in exhausted])
