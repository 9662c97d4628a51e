"""Reconcile: another run for a batch whose run failed or never happened, or give up on it.

The whole step lives here; what only Dagster knows, the state of each batch's current run, comes
in as ``current_runs`` (the sensor passes a query of its instance). A batch is looked at when it
failed, or when it was queued or running without news for ``RECHECK_AFTER``; then
- a run of it is unfinished (queued for its pool, starting, running): left alone;
- its current run finished without settling it (failed, canceled): retried at once;
- its current run was interrupted by a stop of ``make run`` (Ctrl-C mid-run; the stop tags the
  run, as Dagster's run status cannot tell it from a cancel in the UI or a failure): retried at
  once, and that attempt is not charged (``uncharged_attempts``): only charged attempts count
  against ``max_attempts``, so restarts never turn a batch into dead letters;
- Dagster has no current run of it: retried only after ``stale_after``, the time the daemon has
  to turn a tick's run requests into runs (a tick that died before may have lost them).

That time is credited look by look (``unrun_seconds``), each gap between two looks at most half
of ``stale_after``: comparing the clock with the time the run was requested would let a host
clock stepped forward retry a batch whose run request the daemon has not yet turned into a run
(a second run; the upsert keeps it from duplicating predictions, but it costs a run), and one
stepped back hold a lost batch for as long as the step. Half the bound means no single step
alone makes a batch stale: half of ``stale_after`` at least was observed without a run.
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
    # Seconds seen without a run since its last run request (None: not looked at since).
    unrun_seconds: float | None = None
    # Of ``attempts``, those a stop of ``make run`` interrupted (not charged).
    uncharged_attempts: int = 0

    @property
    def charged_attempts(self) -> int:
        """The attempts that count against the limit."""
        return self.attempts - self.uncharged_attempts

    def unrun_for(self, now: datetime, *, stale_after: timedelta) -> timedelta:
        """How long the batch has been without a run at ``now``, credited as the docstring of
        this module says: the gap since the last look, between 0 and half of ``stale_after``."""
        gap = min(max(now - self.updated_at, timedelta(0)), stale_after / 2)
        return timedelta(seconds=self.unrun_seconds or 0.0) + gap


class RunState(StrEnum):
    """What Dagster knows of a batch's current run."""

    IN_FLIGHT = "in_flight"  # queued for its pool, starting or running
    FINISHED = "finished"  # ended (failed, canceled, or succeeded without settling the batch)
    INTERRUPTED = "interrupted"  # ended by a stop of `make run`, not by a failure of its own


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
                table.c.unrun_seconds,
                table.c.uncharged_attempts,
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
    return [BatchState(*row) for row in rows]


def touch_batches(engine: Engine, batch_keys: Sequence[str], *, now: datetime) -> None:
    """Mark batches as looked at, so the bounded reconcile moves on to others."""
    table = db.prediction_batches
    with engine.begin() as connection:
        for chunk in chunked(batch_keys, db.IN_CHUNK):
            connection.execute(
                sa.update(table).where(table.c.batch_key.in_(chunk)).values(updated_at=now)
            )


def record_unrun(engine: Engine, unrun: dict[str, timedelta], *, now: datetime) -> None:
    """Mark batches without a run as looked at, with the time credited to them so far."""
    if not unrun:
        return
    table = db.prediction_batches
    with engine.begin() as connection:
        connection.execute(
            sa.update(table)
            .where(
                table.c.batch_key == sa.bindparam("key"),
                # Not ``in_``: an expanding IN cannot be part of an executemany.
                sa.or_(table.c.status == BatchStatus.QUEUED, table.c.status == BatchStatus.RUNNING),
            )
            .values(unrun_seconds=sa.bindparam("unrun"), updated_at=now),
            [{"key": key, "unrun": spent.total_seconds()} for key, spent in unrun.items()],
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
    """Give failed or lost batches another attempt, or dead-letter them after ``max_attempts``
    charged attempts.

    Batches with a run in flight, and queued or running ones seen without a run for less than
    ``stale_after`` (credited per look, see the module's docstring), are only touched. Those
    whose run a stop interrupted are queued again at once, the interrupted attempt uncharged.
    The others (failed, their run finished without settling them, or never created) are queued
    again with one more attempt, or, with ``max_attempts`` charged, become dead letters with
    the last error of their runs.
    """
    candidates = batches_to_reconcile(engine, now=now, recheck_after=recheck_after, limit=limit)
    if not candidates:
        return ReconcileOutcome()
    runs = current_runs(candidates)
    unrun = {
        c.batch_key: c.unrun_for(now, stale_after=stale_after)
        for c in candidates
        if c.batch_key not in runs and c.status != BatchStatus.FAILED
    }

    def waits(batch: BatchState) -> bool:
        state = runs.get(batch.batch_key)
        if state is RunState.IN_FLIGHT:
            return True
        if state in (RunState.FINISHED, RunState.INTERRUPTED) or batch.status == BatchStatus.FAILED:
            return False
        # No run yet: the daemon may still make it, until it was seen without one that long.
        return unrun[batch.batch_key] < stale_after

    in_flight = [c.batch_key for c in candidates if runs.get(c.batch_key) is RunState.IN_FLIGHT]
    touch_batches(engine, in_flight, now=now)
    record_unrun(engine, {k: v for k, v in unrun.items() if v < stale_after}, now=now)
    settled = [c for c in candidates if not waits(c)]
    interrupted = [c for c in settled if runs.get(c.batch_key) is RunState.INTERRUPTED]
    charged = [c for c in settled if runs.get(c.batch_key) is not RunState.INTERRUPTED]
    retried = count_attempt(engine, [c.batch_key for c in interrupted], now=now, charged=False)
    retried |= count_attempt(
        engine, [c.batch_key for c in charged if c.charged_attempts < max_attempts], now=now
    )
    exhausted = [c for c in charged if c.charged_attempts >= max_attempts]
    for batch in exhausted:
        error = last_error(engine, batch.batch_key) or "its runs never finished it"
        reason = f"batch {batch.batch_key} failed after {batch.charged_attempts} attempts: {error}"
        dead_letter_batch(engine, batch.batch_key, reason=reason, now=now)
    return ReconcileOutcome(retried=retried, dead_lettered=[b.batch_key for b in exhausted])
