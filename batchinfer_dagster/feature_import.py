"""The feature import's delta: which records moved since the last import, and its watermark.

An import moves the records of ``data_points`` added or changed since the watermark of its
target (a feature store: the local ``features`` table, or one BigQuery source table), so its
cost follows what is new, not everything ever stored. The watermark is a time kept in the app
database (``feature_imports``, one row per target), advanced only when the import succeeded:
a failed import moves the same rows again next time.

The rule, with ``since`` the stored watermark and ``now`` the import's start:

- a record moves when ``updated_at >= since`` (a record changed exactly at the watermark moves);
- after success the watermark becomes ``max(since, now - settle)``.

``settle`` covers writers whose transaction stamped ``updated_at`` just before the import read
but committed just after: a record stamped within ``settle`` of an import is moved again by the
next one (the stores' writes are idempotent upserts keyed by record id), so none is skipped.
Its cost: an import run within ``settle`` of a change moves that change again. The clocks of the
writers and of the import must agree within ``settle`` (NTP-synced hosts do, by far).

A full import (``batchinfer import-data --full``) moves every record and resets the watermark.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy import Engine

from batchinfer_dagster import db

IMPORT_CHUNK = 10_000
# Longer than any transaction that writes records (a 5,000-row load chunk commits in well
# under a second); see the module docstring.
SETTLE = timedelta(seconds=5)


@dataclass(frozen=True)
class ImportWindow:
    """The records one import moves: changed at or after ``since`` (all when ``since`` is None).

    ``next_watermark`` is what ``commit_watermark`` stores once the import succeeded.
    """

    target: str
    since: datetime | None
    next_watermark: datetime

    @property
    def full(self) -> bool:
        return self.since is None


def stored_watermark(engine: Engine, target: str) -> datetime | None:
    """The watermark of ``target``'s last successful import; None before the first."""
    table = db.feature_imports
    with engine.connect() as connection:
        return connection.execute(
            sa.select(table.c.watermark).where(table.c.target == target)
        ).scalar_one_or_none()


def open_window(
    engine: Engine,
    target: str,
    *,
    full: bool = False,
    clock: Callable[[], datetime] = db.utcnow,
    settle: timedelta = SETTLE,
) -> ImportWindow:
    """The window of the next import into ``target``: since its watermark, or everything."""
    now = clock()
    since = None if full else stored_watermark(engine, target)
    safe = now - settle
    next_watermark = safe if since is None else max(since, safe)
    return ImportWindow(target=target, since=since, next_watermark=next_watermark)


def iter_changed(
    engine: Engine, window: ImportWindow, chunk: int = IMPORT_CHUNK
) -> Iterable[list[sa.Row]]:
    """Records of ``window`` (id, text, updated_at), ``chunk`` at a time, bounded memory.

    Keyset pagination on ``(updated_at, id)``, which the index ``ix_data_points_updated_at_id``
    serves, so an import with few changes reads few index entries whatever the table's size.
    """
    table = db.data_points
    key = sa.tuple_(table.c.updated_at, table.c.id)
    after: tuple[datetime, int] | None = None
    while True:
        query = sa.select(table.c.id, table.c.text, table.c.updated_at)
        if window.since is not None:
            query = query.where(table.c.updated_at >= window.since)
        if after is not None:
            query = query.where(key > sa.tuple_(sa.literal(after[0], db.UtcDateTime()), after[1]))
        query = query.order_by(table.c.updated_at, table.c.id).limit(chunk)
        with engine.connect() as connection:
            rows = connection.execute(query).all()
        if not rows:
            return
        yield rows
        after = (rows[-1].updated_at, rows[-1].id)


def commit_watermark(engine: Engine, window: ImportWindow, rows_imported: int) -> None:
    """Store ``window.next_watermark`` for its target: call only after the import succeeded."""
    with engine.begin() as connection:
        db.upsert(
            connection,
            db.feature_imports,
            [
                {
                    "target": window.target,
                    "watermark": window.next_watermark,
                    "imported_at": db.utcnow(),
                    "rows_imported": rows_imported,
                    "full_import": window.full,
                }
            ],
            key=["target"],
            update=["watermark", "imported_at", "rows_imported", "full_import"],
        )
