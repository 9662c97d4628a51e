"""Replay: publish a request again for open dead letters that name a record, once each.

``batchinfer dead-letters replay`` calls it; a replayed dead letter keeps ``replayed_at`` and the
new message id, and is resolved like any other when its record is predicted.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy import Engine

from batchinfer_dagster import db
from batchinfer_dagster.ledger.messages import request_payload

REPLAY_CHUNK = 1000

# Publishes payloads in order and returns their message ids (``RequestQueue.publish``).
Publish = Callable[[Sequence[bytes]], list[str]]


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
    """What ``replay_dead_letters`` did; each dead letter keeps the new message id it got."""

    replayed: int = 0
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
    publish: Publish,
    which: DeadLetterFilter,
    *,
    now: datetime,
    chunk: int = REPLAY_CHUNK,
) -> ReplayReport:
    """Publish a request again for each open dead letter that names a record, once.

    ``publish`` sends payloads (the CLI passes its queue's ``publish``; the ledger knows no
    queue client).

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
        payloads = [request_payload(record_id) for _, record_id in claimed]
        try:
            message_ids = publish(payloads)
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
    report.not_replayable = _count_dead_letters(
        engine, *which.clauses(), table.c.record_id.is_(None)
    )
    report.already_replayed = (
        _count_dead_letters(engine, *which.clauses(), table.c.replayed_at.is_not(None))
        - report.replayed
    )
    return report
