"""The prediction export's delta: which prediction rows changed or went since the last export.

An export moves the rows of ``predictions`` written since its last export into its target (a
BigQuery table), and removes those deleted since, so its cost follows what is new.

Every prediction write is numbered by the database itself, in commit order (migration 0007,
the same scheme as the record numbers of migration 0004 that ``feature_import`` reads): a
trigger increments ``prediction_changes`` and stamps the row's ``change_seq``; a deleted row
leaves a tombstone in ``prediction_deletions``. The counter's row stays locked by the writing
transaction until it commits, so its committed value is a horizon: every change numbered up to
it is visible, every later one will be numbered higher. An export reads ``(since, through]``
and the caller keeps ``through`` once the export succeeded. A settle whose transaction commits
late is numbered when it writes, yet no number above it is committed before it, so the horizon
an export reads never passes it; a host clock (the rows' ``updated_at``, taken by the run
before its transaction commits) would, and is not read.

Every write of a row counts: a new prediction, a re-run, and a row that stops being its
record's current one (another configuration's answer, a promoted rollout), so the exported
``is_current`` follows. A record's staleness (its text changed since) is a property of the
record, not of the prediction row, and is not exported.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy import Connection, Engine

from batchinfer_dagster import db
from batchinfer_dagster.feature_import import iter_window_pages

EXPORT_CHUNK = 10_000


@dataclass(frozen=True)
class ExportWindow:
    """The prediction changes one export moves: numbered in ``(since, through]``."""

    since: int
    through: int

    @property
    def first(self) -> int:
        return self.since

    @property
    def empty(self) -> bool:
        return self.through == self.since


class ExportWindowError(RuntimeError):
    """The stored watermark is ahead of the app database (restored from an older backup)."""


@dataclass(frozen=True)
class PredictionReceipt:
    """One exported prediction row: what was predicted, for which record, under what.

    ``top_label``/``top_score``: the highest score and its label (the first of equal ones), None
    when the row has no labels. ``predicted_at``: when the row was last written (its
    ``updated_at``, the run's clock: shown, never compared). ``change_seq``: its change number,
    which the target compares so an older export never overwrites a newer one.
    """

    record_id: int
    configuration: str
    model: str
    labels: list[str]
    scores: list[float]
    top_label: str | None
    top_score: float | None
    text_digest: str | None
    predicted_at: datetime
    is_current: bool
    change_seq: int


@dataclass(frozen=True)
class PredictionTombstone:
    """A prediction row deleted (its record erased, its rollout discarded) at ``change_seq``."""

    record_id: int
    configuration: str
    change_seq: int


class MalformedPredictionError(ValueError):
    """A stored prediction row whose labels and scores do not pair up."""


def committed_horizon(connection: Connection) -> int:
    """The newest committed prediction change number."""
    return connection.execute(
        sa.select(db.prediction_changes.c.value).where(db.prediction_changes.c.id == 1)
    ).scalar_one()


def open_window(engine: Engine, since: int | None) -> ExportWindow:
    """The next export's window: after ``since`` (None or 0: everything) up to the horizon.

    Raises ``ExportWindowError`` when ``since`` is past the horizon: the app database was
    restored from a backup older than the last export.
    """
    with engine.connect() as connection:
        through = committed_horizon(connection)
    since = since or 0
    if since > through:
        raise ExportWindowError(
            f"the last export reached prediction change {since}, but the app database has only "
            f"reached {through}: it was restored from an older backup. Empty the BigQuery "
            "table and export everything again (materialize with full: true)"
        )
    return ExportWindow(since=since, through=through)


def receipt_of(row: sa.Row) -> PredictionReceipt:
    """A ``predictions`` row as its receipt; ``MalformedPredictionError`` names a bad row."""
    labels, scores = list(row.labels), [float(score) for score in row.scores]
    if len(labels) != len(scores):
        raise MalformedPredictionError(
            f"prediction of record {row.record_id} under configuration {row.configuration} "
            f"(change {row.change_seq}) has {len(labels)} labels but {len(scores)} scores; "
            "predict the record again (`batchinfer predict`) to replace it"
        )
    top = max(range(len(scores)), key=scores.__getitem__, default=None)
    return PredictionReceipt(
        record_id=row.record_id,
        configuration=row.configuration,
        model=row.model,
        labels=labels,
        scores=scores,
        top_label=None if top is None else labels[top],
        top_score=None if top is None else scores[top],
        text_digest=row.text_digest,
        predicted_at=row.updated_at,
        is_current=bool(row.is_current),
        change_seq=row.change_seq,
    )


def iter_changed(
    engine: Engine, window: ExportWindow, chunk: int = EXPORT_CHUNK
) -> Iterable[list[PredictionReceipt]]:
    """Receipts of the rows written in ``window``, ``chunk`` at a time, in ``(change_seq,
    record_id, configuration)`` order (all rows of a PostgreSQL transaction share a number)."""
    table = db.predictions
    columns = [
        table.c.model,
        table.c.labels,
        table.c.scores,
        table.c.text_digest,
        table.c.updated_at,
        table.c.is_current,
    ]
    keys = [table.c.record_id, table.c.configuration]
    for rows in iter_window_pages(engine, window, keys, columns, chunk=chunk):
        yield [receipt_of(row) for row in rows]


def iter_deleted(
    engine: Engine, window: ExportWindow, chunk: int = EXPORT_CHUNK
) -> Iterable[list[PredictionTombstone]]:
    """The prediction rows deleted in ``window``, ``chunk`` at a time.

    A row deleted and written again has both a tombstone and a row; the target keeps whichever
    has the higher number.
    """
    table = db.prediction_deletions
    keys = [table.c.record_id, table.c.configuration]
    for rows in iter_window_pages(engine, window, keys, [], chunk=chunk):
        yield [
            PredictionTombstone(
                record_id=row.record_id, configuration=row.configuration, change_seq=row.change_seq
            )
            for row in rows
        ]


def prune_tombstones(engine: Engine, through: int) -> int:
    """Delete the tombstones numbered up to ``through`` (included); how many went.

    A tombstone is needed until an export has moved it (the export's watermark reached its
    number); after that only ``full: true`` would read it again, and a full export starts from
    a table that has no such row. The caller picks ``through`` (``export_watermark``).
    """
    table = db.prediction_deletions
    with engine.begin() as connection:
        return connection.execute(table.delete().where(table.c.change_seq <= through)).rowcount
