"""The feature wait: requests whose record is not in the feature store yet, looked up again.

A run that finds no features for a record leaves its request ``waiting_features`` with a
``not_before`` (``runs.settle_missing``: 5 s doubling to 60 s, never past the wait's end). The
sensor looks such requests up here, in the feature store itself, before it spends a partition and
a run on them: a record that arrived goes into a new ledger batch; one still missing only moves
its ``not_before`` on (no batch, no partition, no run) or, once ``BATCHINFER_FEATURE_WAIT_SECONDS``
passed since it was received, becomes a dead letter ``unknown record id``. That time is credited
gap by gap (``runs.credited_wait``): a host clock stepped forward ends the wait at most
``FEATURE_WAIT_MAX_STEP`` early, not at once. An import into the
feature store wakes every waiting request at once (``wake``), whatever its backoff. A look-up
that fails (the feature store down) is charged to the requests it was for: each keeps waiting,
with the error and its next backoff recorded, and none is dead-lettered for it (an unanswered
look-up says nothing about the record); the caller's other work goes on.

A ``not_before`` is never more than ``FEATURE_BACKOFF_MAX`` ahead of the clock that wrote it. One
further ahead was written before the host clock stepped back (NTP correcting a clock that ran
fast), and is due now: otherwise the request would not be looked up for as long as the step.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy import Engine

from batchinfer_dagster import db
from batchinfer_dagster.chunks import chunk_list, chunked
from batchinfer_dagster.ledger.dead_letters import MAX_ERROR_CHARS
from batchinfer_dagster.ledger.intake import new_batches
from batchinfer_dagster.ledger.runs import (
    FEATURE_BACKOFF_MAX,
    BatchRequest,
    credited_wait,
    feature_backoff,
    settle_missing,
)
from batchinfer_dagster.ledger.states import RequestStatus, may_leave_for

# Record ids -> those of them the feature store holds (``FeatureStore.fetch``'s keys).
FeatureLookup = Callable[[Sequence[int]], Collection[int]]


@dataclass(frozen=True)
class RecheckOutcome:
    """What one look-up of waiting requests did."""

    batch_keys: list[str] = field(default_factory=list)
    still_waiting: int = 0
    dead_lettered: int = 0
    # The feature store's failure, when the look-up failed (those requests still wait).
    lookup_error: str | None = None


def recheck_waiting(
    engine: Engine,
    lookup: FeatureLookup,
    *,
    now: datetime,
    feature_wait: timedelta,
    batch_size: int,
    limit: int,
    wake: bool = False,
) -> RecheckOutcome:
    """Look up waiting requests that are due (all of them with ``wake``), at most ``limit``.

    Returns the new batch keys (one run each), how many still wait and how many became dead
    letters. The feature store is asked once for the distinct record ids, outside the ledger
    transaction; every status change keeps to the request state machine, so a request that moved
    on meanwhile is left alone.
    """
    table = db.prediction_requests
    query = (
        sa.select(
            table.c.message_id,
            table.c.record_id,
            table.c.status,
            table.c.attempts,
            table.c.received_at,
            table.c.updated_at,
            table.c.feature_waited_seconds,
        )
        .where(table.c.status == RequestStatus.WAITING_FEATURES)
        .order_by(table.c.not_before)
        .limit(limit)
    )
    if not wake:
        query = query.where(
            sa.or_(table.c.not_before <= now, table.c.not_before > now + FEATURE_BACKOFF_MAX)
        )
    with engine.connect() as connection:
        rows = [BatchRequest(*row) for row in connection.execute(query)]
    if not rows:
        return RecheckOutcome()
    try:
        present = set(lookup(sorted({row.record_id for row in rows})))
    except Exception as exc:  # noqa: BLE001 - any failure of the store is charged alike
        error = f"looking up {len(rows)} waiting requests in the feature store failed: {exc}"
        _postpone(engine, rows, error=error, now=now)
        return RecheckOutcome(still_waiting=len(rows), lookup_error=error)
    ready = [row.message_id for row in rows if row.record_id in present]
    missing = [row for row in rows if row.record_id not in present]
    with engine.begin() as connection:
        groups = chunk_list(ready, batch_size)
        batch_keys = new_batches(connection, len(groups), now)
        for batch_key, group in zip(batch_keys, groups, strict=True):
            for chunk in chunked(group, db.IN_CHUNK):
                connection.execute(
                    sa.update(table)
                    .where(
                        table.c.message_id.in_(chunk),
                        may_leave_for(table.c.status, RequestStatus.QUEUED),
                    )
                    .values(batch_key=batch_key, status=RequestStatus.QUEUED, updated_at=now)
                )
        still = _still_waiting(connection, [row.message_id for row in missing])
        missing = [row for row in missing if row.message_id in still]
        waiting, dead = settle_missing(connection, missing, feature_wait=feature_wait, now=now)
    return RecheckOutcome(batch_keys, waiting, dead)


def _still_waiting(connection: sa.Connection, message_ids: Sequence[str]) -> set[str]:
    """Those of ``message_ids`` still waiting for features, locked until the caller commits.

    The store was asked outside the ledger's transaction. A re-materialization may have
    predicted a request meanwhile, and the state machine lets a re-materialization move a done
    request back to waiting or to a dead letter, so ``settle_missing``'s state guards would let
    this look-up write over the prediction (waiting again, or "unknown record id"). The row
    lock (PostgreSQL; SQLite serializes writers) makes a settle that comes later wait for it.
    """
    table = db.prediction_requests
    found: set[str] = set()
    for chunk in chunked(message_ids, db.IN_CHUNK):
        found.update(
            connection.execute(
                sa.select(table.c.message_id)
                .where(
                    table.c.message_id.in_(chunk),
                    table.c.status == RequestStatus.WAITING_FEATURES,
                )
                .with_for_update()
            ).scalars()
        )
    return found


def _postpone(engine: Engine, rows: Sequence[BatchRequest], *, error: str, now: datetime) -> None:
    """Record a failed look-up on each request and move its next look-up on by its backoff.

    The time it waited is credited as for a look-up that answered, so an outage of the store
    neither ends a wait nor holds it open longer than one that answered would have.
    """
    table = db.prediction_requests
    with engine.begin() as connection:
        connection.execute(
            sa.update(table)
            .where(
                table.c.message_id == sa.bindparam("key"),
                table.c.status == RequestStatus.WAITING_FEATURES,
            )
            .values(
                attempts=table.c.attempts + 1,
                not_before=sa.bindparam("retry_at"),
                feature_waited_seconds=sa.bindparam("waited"),
                error=error[:MAX_ERROR_CHARS],
                updated_at=now,
            ),
            [
                {
                    "key": r.message_id,
                    "retry_at": now + feature_backoff(r.attempts),
                    "waited": credited_wait(r, now).total_seconds(),
                }
                for r in rows
            ],
        )


WAITING_REASON = "record not in the feature store yet"


@dataclass(frozen=True)
class WaitingRequest:
    """A request waiting for its record's features, as ``status`` and ``dead-letters`` show it.

    ``next_lookup_at``: when the sensor looks it up again (sooner after an import);
    ``dead_letter_at``: when it becomes a dead letter ``unknown record id`` if still missing and
    the clock runs on without a step (the rest of its credited wait after its last look-up).
    """

    message_id: str
    record_id: int
    reason: str
    received_at: datetime
    next_lookup_at: datetime | None
    dead_letter_at: datetime

    def document(self) -> dict[str, object]:
        return {
            "message_id": self.message_id,
            "record_id": self.record_id,
            "reason": self.reason,
            "received_at": self.received_at.isoformat(),
            "next_lookup_at": self.next_lookup_at.isoformat() if self.next_lookup_at else None,
            "dead_letter_at": self.dead_letter_at.isoformat(),
        }


def waiting_requests(
    engine: Engine, *, feature_wait: timedelta, limit: int
) -> tuple[list[WaitingRequest], int]:
    """The ``limit`` waiting requests nearest their deadline, and how many wait in all."""
    table = db.prediction_requests
    waiting = table.c.status == RequestStatus.WAITING_FEATURES
    with engine.connect() as connection:
        total = connection.execute(
            sa.select(sa.func.count()).select_from(table).where(waiting)
        ).scalar_one()
        rows = connection.execute(
            sa.select(
                table.c.message_id,
                table.c.record_id,
                table.c.received_at,
                table.c.not_before,
                table.c.updated_at,
                table.c.feature_waited_seconds,
            )
            .where(waiting)
            .order_by(table.c.received_at, table.c.message_id)
            .limit(limit)
        ).all()
    shown = [
        WaitingRequest(
            message_id=row.message_id,
            record_id=row.record_id,
            reason=WAITING_REASON,
            received_at=row.received_at,
            next_lookup_at=row.not_before,
            dead_letter_at=row.received_at + feature_wait
            if row.feature_waited_seconds is None
            else row.updated_at + feature_wait - timedelta(seconds=row.feature_waited_seconds),
        )
        for row in rows
    ]
    return shown, total
