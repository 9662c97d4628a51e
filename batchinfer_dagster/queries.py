"""The read side: every query the CLI runs against the app database, named and typed.

The CLI parses arguments and prints; what it shows comes from here, as frozen values rather than
SQLAlchemy rows, so a column rename breaks one function (and its test), not a printout. Nothing
here writes: the write side is the ledger (``batchinfer_dagster.ledger``), records
(``records``), staleness and rollout. Queries that belong to one of those use cases (the feature
wait, stale counts, lineage, rollout reports) stay with it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from batchinfer_dagster import db


@dataclass(frozen=True)
class StoredPrediction:
    """One stored prediction of a record, with the record's text when it still exists.

    ``labels`` and ``scores`` are ranked (best first) and equally long; ``text`` is None when the
    record was deleted after it was predicted (its ``sequence`` is what the model saw).
    """

    record_id: int
    model: str
    sequence: str
    labels: list[str]
    scores: list[float]
    text: str | None


def prediction_of(
    engine: sa.Engine, record_id: int, model: str | None = None
) -> StoredPrediction | None:
    """The record's current prediction, else its newest (of ``model`` when given), or None."""
    table, records = db.predictions, db.data_points
    query = (
        sa.select(table.c.model, table.c.sequence, table.c.labels, table.c.scores, records.c.text)
        .select_from(table.outerjoin(records, records.c.id == table.c.record_id))
        .where(table.c.record_id == record_id)
        .order_by(table.c.is_current.desc(), table.c.updated_at.desc())
        .limit(1)
    )
    if model is not None:
        query = query.where(table.c.model == model)
    with engine.connect() as connection:
        row = connection.execute(query).one_or_none()
    if row is None:
        return None
    return StoredPrediction(
        record_id=record_id,
        model=row.model,
        sequence=row.sequence,
        labels=list(row.labels),
        scores=list(row.scores),
        text=row.text,
    )


def missing_records(engine: sa.Engine, record_ids: Sequence[int]) -> set[int]:
    """Those of ``record_ids`` that no record (``data_points`` row) has."""
    with engine.connect() as connection:
        found = db.existing_values(connection, db.data_points.c.id, list(set(record_ids)))
    return set(record_ids) - found


@dataclass(frozen=True)
class TableCounts:
    """How many rows the app database holds, by table (and by status where rows have one).

    ``dead_letters_open`` are those whose record has no prediction since; ``queue_unacked`` is
    the local queue's table (None when the queue is Pub/Sub, which keeps no table here).
    """

    records: int
    requests: dict[str, int]
    batches: dict[str, int]
    predictions: int
    dead_letters_open: int
    dead_letters_resolved: int
    queue_unacked: int | None


def _count(connection: sa.Connection, table: sa.Table, *where: sa.ColumnElement[bool]) -> int:
    query = sa.select(sa.func.count()).select_from(table).where(*where)
    return connection.execute(query).scalar_one()


def _count_by(connection: sa.Connection, column: sa.Column) -> dict[str, int]:
    rows = connection.execute(sa.select(column, sa.func.count()).group_by(column)).all()
    return {str(value): count for value, count in rows}


def table_counts(engine: sa.Engine, *, local_queue: bool) -> TableCounts:
    """The counts ``batchinfer status`` shows, read in one connection."""
    letters = db.dead_letters
    with engine.connect() as connection:
        return TableCounts(
            records=_count(connection, db.data_points),
            requests=_count_by(connection, db.prediction_requests.c.status),
            batches=_count_by(connection, db.prediction_batches.c.status),
            predictions=_count(connection, db.predictions),
            dead_letters_open=_count(connection, letters, letters.c.resolved_at.is_(None)),
            dead_letters_resolved=_count(connection, letters, letters.c.resolved_at.is_not(None)),
            queue_unacked=_count(connection, db.queue_messages) if local_queue else None,
        )


def current_prediction_record_ids(engine: sa.Engine, limit: int | None = None) -> list[int]:
    """The ids of records that have a current prediction, ascending; the first ``limit``."""
    table = db.predictions
    query = (
        sa.select(table.c.record_id)
        .where(table.c.is_current.is_(True))
        .order_by(table.c.record_id)
        .limit(limit)
    )
    with engine.connect() as connection:
        return list(connection.execute(query).scalars())


@dataclass(frozen=True)
class DeadLetter:
    """A ``dead_letters`` row: a message that will not be predicted as it is, and why.

    ``record_id`` is None for a message that names no record (malformed); ``resolved_at`` is set
    once the record was predicted after all, ``replayed_at`` once its request was published again.
    """

    id: int
    payload: str
    reason: str
    received_at: datetime
    source: str
    message_id: str | None
    record_id: int | None
    delivery_attempts: int | None
    resolved_at: datetime | None
    resolved_by_run: str | None
    replayed_at: datetime | None
    replay_message_id: str | None

    def document(self) -> dict[str, Any]:
        """The JSON object ``batchinfer dead-letters`` prints (times in ISO 8601)."""
        return {
            "id": self.id,
            "payload": self.payload,
            "reason": self.reason,
            "received_at": self.received_at.isoformat(),
            "source": self.source,
            "message_id": self.message_id,
            "record_id": self.record_id,
            "delivery_attempts": self.delivery_attempts,
            "resolved_at": self.resolved_at.isoformat() if self.resolved_at else None,
            "resolved_by_run": self.resolved_by_run,
            "replayed_at": self.replayed_at.isoformat() if self.replayed_at else None,
            "replay_message_id": self.replay_message_id,
        }


def dead_letters(engine: sa.Engine, *, limit: int, include_resolved: bool) -> list[DeadLetter]:
    """The first ``limit`` dead letters, oldest first; open ones only unless
    ``include_resolved``."""
    table = db.dead_letters
    columns = [table.c[field.name] for field in fields(DeadLetter)]
    query = sa.select(*columns).order_by(table.c.id).limit(limit)
    if not include_resolved:
        query = query.where(table.c.resolved_at.is_(None))
    with engine.connect() as connection:
        return [DeadLetter(*row) for row in connection.execute(query)]
