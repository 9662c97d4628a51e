"""The feature import's delta: which records changed or went since the last import, by number.

An import moves the records of ``data_points`` added or changed since the last import into its
target (a feature store: the local ``features`` table, or one BigQuery source table), and
removes those deleted since, so its cost follows what is new, not everything ever stored.

Every record write is numbered by the database itself, in commit order (migration 0004: a
trigger increments ``record_changes`` and stamps the row's ``change_seq``; a delete leaves a
tombstone in ``record_deletions`` with its own number). The counter's row stays locked by the
writing transaction until it commits, so the committed counter value ``through`` is a horizon:
every change numbered up to it is committed and visible, and every later change will get a
higher number. An import therefore reads the changes numbered in ``(since, through]``, with
``since`` the ``through`` of the target's last successful import, and stores ``through`` once it
succeeded (a failed import moves the same changes again next time).

Why not a time watermark (what this replaced): ``updated_at`` is stamped by the writer's clock
before its transaction commits, so a transaction that took longer than the assumed lag, or a
clock stepped back, put committed records behind the watermark for good. Numbers assigned in
commit order depend on neither. Why not a plain PostgreSQL sequence: sequence values are handed
out at insert time, not commit time, so a long transaction holding number 5 commits after one
holding 6, and a reader that saw 6 would pass 5 by (the same fault); it would need a horizon
computed from in-progress transaction ids (``xmin``), which SQLite has no equivalent of. The
cost of the counter row: record writers are serialized for the length of their transaction on
PostgreSQL (SQLite serializes writers anyway); record writes are one-statement chunks of 5,000.
On PostgreSQL all rows of a transaction share its number, on SQLite each row has its own; the
reads page on ``(change_seq, id)`` either way.

A full import (``batchinfer import-data --full``) reads every record up to the horizon and
leaves the target holding exactly the records that exist.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy import Connection, Engine

from batchinfer_dagster import db

IMPORT_CHUNK = 10_000


@dataclass(frozen=True)
class ImportWindow:
    """The changes one import moves: numbered in ``(since, through]`` (all when ``since`` is
    None, a full import). ``commit_watermark`` stores ``through`` once the import succeeded."""

    target: str
    since: int | None
    through: int

    @property
    def full(self) -> bool:
        return self.since is None

    @property
    def first(self) -> int:
        """The lowest change number the window excludes (0: none)."""
        return self.since or 0


def stored_watermark(engine: Engine, target: str) -> int | None:
    """The change number ``target``'s last successful import reached; None before the first."""
    table = db.feature_imports
    with engine.connect() as connection:
        return connection.execute(
            sa.select(table.c.imported_through).where(table.c.target == target)
        ).scalar_one_or_none()


def committed_horizon(connection: Connection) -> int:
    """The newest committed change number: every change numbered up to it is visible."""
    return connection.execute(
        sa.select(db.record_changes.c.value).where(db.record_changes.c.id == 1)
    ).scalar_one()


def open_window(engine: Engine, target: str, *, full: bool = False) -> ImportWindow:
    """The window of the next import into ``target``: since its last import, or everything."""
    since = None if full else stored_watermark(engine, target)
    with engine.connect() as connection:
        through = committed_horizon(connection)
    if since is not None and since > through:
        # Only after restoring the app database from a backup older than the last import.
        raise RuntimeError(
            f"feature import target {target!r} reached change {since}, but the app database "
            f"has only reached {through}: it was restored from an older backup; run "
            "`batchinfer import-data --full` to rebuild the feature store from it"
        )
    return ImportWindow(target=target, since=since, through=through)


def iter_changed(
    engine: Engine, window: ImportWindow, chunk: int = IMPORT_CHUNK
) -> Iterable[list[sa.Row]]:
    """Records of ``window`` (id, text, updated_at, change_seq), ``chunk`` at a time.

    Keyset pagination on ``(change_seq, id)``, compared and ordered by the same key, which the
    index ``ix_data_points_change_seq_id`` serves: an import with few changes reads few index
    entries whatever the table's size.
    """
    table = db.data_points
    key = sa.tuple_(table.c.change_seq, table.c.id)
    after: tuple[int, int] | None = None
    while True:
        query = (
            sa.select(table.c.id, table.c.text, table.c.updated_at, table.c.change_seq)
            .where(table.c.change_seq > window.first, table.c.change_seq <= window.through)
            .order_by(table.c.change_seq, table.c.id)
            .limit(chunk)
        )
        if after is not None:
            query = query.where(
                key > sa.tuple_(sa.literal(after[0], sa.BigInteger), sa.literal(after[1]))
            )
        with engine.connect() as connection:
            rows = connection.execute(query).all()
        if not rows:
            return
        yield rows
        after = (rows[-1].change_seq, rows[-1].id)


def iter_deleted(
    engine: Engine, window: ImportWindow, chunk: int = IMPORT_CHUNK
) -> Iterable[list[int]]:
    """Ids of the records deleted in ``window``, ``chunk`` at a time, keyset-paged on
    ``(change_seq, record_id)`` (a transaction's deletions share one number on PostgreSQL).

    A full import needs none of them (it keeps only the records that exist); an incremental
    one removes these from its target after moving the window's changed records.
    """
    table = db.record_deletions
    key = sa.tuple_(table.c.change_seq, table.c.record_id)
    after: tuple[int, int] | None = None
    while True:
        query = (
            sa.select(table.c.record_id, table.c.change_seq)
            .where(table.c.change_seq > window.first, table.c.change_seq <= window.through)
            .order_by(table.c.change_seq, table.c.record_id)
            .limit(chunk)
        )
        if after is not None:
            query = query.where(
                key > sa.tuple_(sa.literal(after[0], sa.BigInteger), sa.literal(after[1]))
            )
        with engine.connect() as connection:
            rows = connection.execute(query).all()
        if not rows:
            return
        yield [row.record_id for row in rows]
        after = (rows[-1].change_seq, rows[-1].record_id)


def commit_watermark(engine: Engine, window: ImportWindow, rows_imported: int) -> None:
    """Store ``window.through`` for its target: call only after the import succeeded."""
    with engine.begin() as connection:
        db.upsert(
            connection,
            db.feature_imports,
            [
                {
                    "target": window.target,
                    "imported_through": window.through,
                    "imported_at": db.utcnow(),
                    "rows_imported": rows_imported,
                    "full_import": window.full,
                }
            ],
            key=["target"],
            update=["imported_through", "imported_at", "rows_imported", "full_import"],
        )
