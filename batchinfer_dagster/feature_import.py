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

Imports of one target run one at a time (``import_lock``): the CLI's ``import-data`` and a
Dagster run of the ``features`` asset may start together. Overlapping, the one that writes last
could write a page it read before the other's newer one (stale text behind a watermark that has
passed it), and the one that commits last could move the stored ``imported_at`` backward (below
the other's stamps, so after a database clock stepped back the next import's rows would lose
the newer-wins comparison to rows already stored).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy import Connection, Engine

from batchinfer_dagster import db

IMPORT_CHUNK = 10_000
# The first key of the PostgreSQL advisory lock of an import (``import_lock``); the second is the
# target's hash. Any constant that no other lock of the app database uses.
IMPORT_LOCK_CLASS = 2622


@contextmanager
def import_lock(engine: Engine, target: str) -> Iterator[None]:
    """Hold ``target``'s import lock for the whole import; waits while another import holds it.

    PostgreSQL: a transaction-level advisory lock (``pg_advisory_xact_lock``) on a connection of
    its own, held until the transaction ends here, so a killed importer releases it with its
    connection. SQLite: a file lock beside the database (``<file>.import-<target>.lock``),
    released by the OS when its process dies; an in-memory database has one process.
    """
    if engine.dialect.name == "postgresql":
        with engine.connect() as connection, connection.begin():
            connection.execute(
                sa.select(
                    sa.func.pg_advisory_xact_lock(IMPORT_LOCK_CLASS, sa.func.hashtext(target))
                )
            )
            yield
        return
    database = db.sqlite_file(engine.url.render_as_string(hide_password=False))
    if database is None:
        yield
        return
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", target)
    # No timeout: an import takes as long as its records do, and the other one waits it out.
    with db.file_lock(database.with_name(f"{database.name}.import-{name}.lock"), timeout=-1):
        yield


@dataclass(frozen=True)
class ImportWindow:
    """The changes one import moves: numbered in ``(since, through]`` (all when ``since`` is
    None, a full import). ``commit_watermark`` stores ``through`` once the import succeeded.

    ``opened_at`` is the import's own time, read from the database with ``through`` (see
    ``open_window``): a target that must order versions by time (the Vertex source table's
    ``feature_timestamp``) stamps the window's rows with it instead of each writer's
    ``updated_at``, which the writing host's clock made and a clock stepped back makes older
    than the version it replaces.
    """

    target: str
    since: int | None
    through: int
    opened_at: datetime

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


def database_now(connection: Connection) -> datetime:
    """The database server's current time, aware UTC, to the microsecond on PostgreSQL and the
    millisecond on SQLite (whose ``CURRENT_TIMESTAMP`` has whole seconds only)."""
    if connection.dialect.name == "sqlite":
        text = connection.execute(
            sa.select(sa.func.strftime("%Y-%m-%d %H:%M:%f", "now"))
        ).scalar_one()
        return datetime.fromisoformat(text).replace(tzinfo=UTC)
    value = connection.execute(sa.select(sa.func.clock_timestamp())).scalar_one()
    return value.astimezone(UTC)


def open_window(engine: Engine, target: str, *, full: bool = False) -> ImportWindow:
    """The window of the next import into ``target``: since its last import, or everything.

    Its ``opened_at`` is the database's time, raised to just after the time of ``target``'s
    last successful import should the database's clock have stepped back since: successive
    imports of a target get increasing times whatever any host's clock does, so a version
    stamped by a later import is never taken for an older one.
    """
    since = None if full else stored_watermark(engine, target)
    table = db.feature_imports
    with engine.connect() as connection:
        through = committed_horizon(connection)
        now = database_now(connection)
        last = connection.execute(
            sa.select(table.c.imported_at).where(table.c.target == target)
        ).scalar_one_or_none()
    if since is not None and since > through:
        # Only after restoring the app database from a backup older than the last import.
        raise RuntimeError(
            f"feature import target {target!r} reached change {since}, but the app database "
            f"has only reached {through}: it was restored from an older backup; run "
            "`batchinfer import-data --full` to rebuild the feature store from it"
        )
    opened_at = now if last is None else max(now, last + timedelta(microseconds=1))
    return ImportWindow(target=target, since=since, through=through, opened_at=opened_at)


class NumberedWindow(Protocol):
    """Changes numbered in ``(first, through]``: an import's window, or an export's."""

    @property
    def first(self) -> int: ...

    @property
    def through(self) -> int: ...


def iter_window_pages(
    engine: Engine,
    window: NumberedWindow,
    key: sa.Column[int] | Sequence[sa.Column[Any]],
    columns: Sequence[sa.ColumnElement[object]],
    chunk: int = IMPORT_CHUNK,
) -> Iterable[list[sa.Row]]:
    """Rows of ``key``'s table whose ``change_seq`` is in ``window``, ``chunk`` at a time.

    Keyset pagination on ``(change_seq, key)``, compared and ordered by the same tuple: on
    PostgreSQL all rows of one transaction share a change number, so the number alone does not
    tell where a page ended; the ids alone are not in change order (an edit renumbers an old
    record). The indexes on ``(change_seq, id)`` serve it, so an import with few changes reads
    few index entries whatever the table's size. Each page is read on a connection of its
    own, so no transaction stays open while the caller writes a page elsewhere. The rows carry
    ``columns`` and, last, ``change_seq`` and ``key`` (used for the next page's bound). ``key``
    may be several columns (a table keyed on two, as ``predictions`` is).
    """
    keys = [key] if isinstance(key, sa.Column) else list(key)
    change_seq = keys[0].table.c.change_seq
    order = (change_seq, *keys)
    after: tuple[Any, ...] | None = None
    while True:
        query = (
            sa.select(*columns, *order)
            .where(change_seq > window.first, change_seq <= window.through)
            .order_by(*order)
            .limit(chunk)
        )
        if after is not None:
            bound = sa.tuple_(
                sa.literal(after[0], sa.BigInteger), *(sa.literal(value) for value in after[1:])
            )
            query = query.where(sa.tuple_(*order) > bound)
        with engine.connect() as connection:
            rows = connection.execute(query).all()
        if not rows:
            return
        yield rows
        after = tuple(rows[-1][-len(order) :])


def iter_changed(
    engine: Engine, window: ImportWindow, chunk: int = IMPORT_CHUNK
) -> Iterable[list[sa.Row]]:
    """Records of ``window`` (id, text, updated_at, change_seq), ``chunk`` at a time, in
    ``(change_seq, id)`` order."""
    table = db.data_points
    return iter_window_pages(
        engine, window, table.c.id, [table.c.text, table.c.updated_at], chunk=chunk
    )


def iter_deleted(
    engine: Engine, window: ImportWindow, chunk: int = IMPORT_CHUNK
) -> Iterable[list[int]]:
    """Ids of the records deleted in ``window``, ``chunk`` at a time, in ``(change_seq,
    record_id)`` order.

    A full import needs none of them (it keeps only the records that exist); an incremental
    one removes these from its target after moving the window's changed records.
    """
    table = db.record_deletions
    for rows in iter_window_pages(engine, window, table.c.record_id, [], chunk=chunk):
        yield [row.record_id for row in rows]


def commit_watermark(engine: Engine, window: ImportWindow, rows_imported: int) -> None:
    """Store ``window.through`` for its target: call only after the import succeeded.

    The stored ``imported_at`` is the window's ``opened_at`` (the database's time), the floor
    of the next window's time.
    """
    with engine.begin() as connection:
        db.upsert(
            connection,
            db.feature_imports,
            [
                {
                    "target": window.target,
                    "imported_through": window.through,
                    "imported_at": window.opened_at,
                    "rows_imported": rows_imported,
                    "full_import": window.full,
                }
            ],
            key=["target"],
            update=["imported_through", "imported_at", "rows_imported", "full_import"],
        )
