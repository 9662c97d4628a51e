"""Replay: publish a request again for open dead letters that name a record, once each.

``batchinfer dead-letters replay`` calls it; a replayed dead letter keeps ``replayed_at`` and the
new message id, and is resolved like any other when its record is predicted.

A rollout's dead letter (``dead_letters.rollout``) is not published: a message on the queue
would become an ordinary request and predict the current configuration. While its rollout
runs it is requested again in the rollout (a new ledger batch of the rollout, as ``rollout
start`` writes them). ``rollout promote`` makes the rollout's open dead letters ordinary ones
in its transaction (the candidate is the current configuration then), so they are published
as normal requests; ``rollout discard`` resolves them. A promote or discard that commits
between a replay's claim and its request in the rollout is seen under the rollout's row lock:
the claim is released and the next claim takes the dead letter as what it is now.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy import Engine

from batchinfer_dagster import db
from batchinfer_dagster.ledger.intake import write_batches
from batchinfer_dagster.ledger.messages import request_payload
from batchinfer_dagster.ledger.rollout_lock import locked_rollout_status
from batchinfer_dagster.ledger.runs import ROLLOUT_RUNNING, ROLLOUT_SOURCE

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
    # Of ``replayed``: rollout dead letters requested again in their running rollout.
    into_rollouts: int = 0
    # Open dead letters still charged to a promoted or discarded rollout, not replayed: promote
    # and discard settle them (migration 0010 those of earlier rollouts), so this stays 0
    # unless a closed rollout's row was changed by hand.
    rollout_closed: int = 0


def _of_open_rollout() -> sa.ColumnElement[bool]:
    """An ordinary dead letter, or one whose rollout is still running."""
    table, rollouts = db.dead_letters, db.rollouts
    running = sa.exists().where(
        rollouts.c.candidate == table.c.rollout, rollouts.c.status == ROLLOUT_RUNNING
    )
    return sa.or_(table.c.rollout.is_(None), running)


def _claim_replays(
    engine: Engine, which: DeadLetterFilter, *, now: datetime, limit: int
) -> list[tuple[int, int, str | None]]:
    """Mark up to ``limit`` replayable dead letters as replayed; returns (id, record id,
    rollout) triples, by id.

    The claim is one UPDATE … WHERE replayed_at IS NULL, so two replays running at once never
    claim the same dead letter.
    """
    table = db.dead_letters
    candidates = (
        sa.select(table.c.id)
        .where(
            *which.clauses(),
            table.c.replayed_at.is_(None),
            table.c.record_id.is_not(None),
            _of_open_rollout(),
        )
        .order_by(table.c.id)
        .limit(limit)
        .scalar_subquery()
    )
    with engine.begin() as connection:
        rows = connection.execute(
            sa.update(table)
            .where(table.c.id.in_(candidates), table.c.replayed_at.is_(None))
            .values(replayed_at=now)
            .returning(table.c.id, table.c.record_id, table.c.rollout)
        ).all()
    return sorted((row.id, row.record_id, row.rollout) for row in rows)


def _request_in_rollouts(
    engine: Engine, claimed: Sequence[tuple[int, int, str]], *, batch_size: int, now: datetime
) -> int:
    """Request the records of rollout dead letters again, each in its own rollout, in one
    transaction: new ledger batches with their ``rollout_batches`` rows (what ``rollout.start``
    writes), and each dead letter's ``replay_message_id`` set to its new request.

    A rollout closed since the claim is left alone: its letters' claim is released (the next
    claim skips them). Returns how many dead letters were requested again.
    """
    table = db.dead_letters
    requested = 0
    by_rollout: dict[str, list[tuple[int, int]]] = {}
    for dead_id, record_id, candidate in claimed:
        by_rollout.setdefault(candidate, []).append((dead_id, record_id))
    with engine.begin() as connection:
        for candidate, letters in sorted(by_rollout.items()):
            status = locked_rollout_status(connection, candidate)
            if status != ROLLOUT_RUNNING:
                connection.execute(
                    sa.update(table)
                    .where(table.c.id.in_([dead_id for dead_id, _ in letters]))
                    .values(replayed_at=None)
                )
                continue
            record_ids = sorted({record_id for _, record_id in letters})
            keys = write_batches(
                connection, record_ids, source=ROLLOUT_SOURCE, batch_size=batch_size, now=now
            )
            connection.execute(
                db.rollout_batches.insert(),
                [{"batch_key": key, "candidate": candidate} for key in keys],
            )
            requests = db.prediction_requests
            message_of = {
                row.record_id: row.message_id
                for row in connection.execute(
                    sa.select(requests.c.record_id, requests.c.message_id).where(
                        requests.c.batch_key.in_(keys)
                    )
                )
            }
            connection.execute(
                sa.update(table)
                .where(table.c.id == sa.bindparam("dead_id"))
                .values(replay_message_id=sa.bindparam("new_id")),
                [
                    {"dead_id": dead_id, "new_id": message_of[record_id]}
                    for dead_id, record_id in letters
                ],
            )
            requested += len(letters)
    return requested


def _release_claims(engine: Engine, dead_ids: Sequence[int]) -> None:
    """Undo ``_claim_replays`` for dead letters that were neither published nor requested."""
    table = db.dead_letters
    with engine.begin() as connection:
        connection.execute(
            sa.update(table).where(table.c.id.in_(list(dead_ids))).values(replayed_at=None)
        )


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
    rollout_batch_size: int = REPLAY_CHUNK,
) -> ReplayReport:
    """Publish a request again for each open dead letter that names a record, once.

    ``publish`` sends payloads (the CLI passes its queue's ``publish``; the ledger knows no
    queue client). A rollout's dead letter goes back into its running rollout instead, in
    ledger batches of at most ``rollout_batch_size`` records (module docstring).

    A replayed dead letter keeps ``replayed_at`` and the new message id, so running the command
    again publishes nothing new for it; when its record is predicted it is resolved as any other.
    If publishing fails, the chunk's claim is released and the error raised: nothing is marked
    replayed that was not published. Works in chunks of ``chunk``: memory stays bounded.
    """
    table = db.dead_letters
    report = ReplayReport()
    while True:
        everything = _claim_replays(engine, which, now=now, limit=chunk)
        if not everything:
            break
        in_rollouts = [(i, r, c) for i, r, c in everything if c is not None]
        if in_rollouts:
            try:
                requested = _request_in_rollouts(
                    engine, in_rollouts, batch_size=rollout_batch_size, now=now
                )
            except BaseException:
                _release_claims(engine, [dead_id for dead_id, _, _ in in_rollouts])
                raise
            report.into_rollouts += requested
            report.replayed += requested
        claimed = [(i, r) for i, r, c in everything if c is None]
        if not claimed:
            continue
        payloads = [request_payload(record_id) for _, record_id in claimed]
        try:
            message_ids = publish(payloads)
        except BaseException:
            _release_claims(engine, [dead_id for dead_id, _ in claimed])
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
    report.rollout_closed = _count_dead_letters(
        engine,
        *which.clauses(),
        table.c.replayed_at.is_(None),
        table.c.record_id.is_not(None),
        sa.not_(_of_open_rollout()),
    )
    return report
