"""The feature store: where a run reads the text of each record it predicts.

``local`` is the ``features`` table in the app database. ``vertex`` is the Vertex AI Feature
Store (BigQuery source table + online store FeatureView), in ``vertex_feature_store.py``. A record
the store does not have is *missing*, not an error: the ledger waits for the next sync
(docs/architecture.md, "Delivery guarantees").
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Engine

from batchinfer_dagster import db, feature_import
from batchinfer_dagster.chunks import chunked
from batchinfer_dagster.feature_import import ImportWindow
from batchinfer_dagster.staleness import store_text_digests


class FeatureStoreUnavailableError(RuntimeError):
    """The feature store could not be asked (a denied or failed call), as opposed to a record
    it does not have; the message names the store and what to check."""


@dataclass(frozen=True)
class ImportResult:
    """What an import did, shown as asset metadata and by ``batchinfer import-data``."""

    rows_imported: int
    total_records: int
    details: dict[str, Any] = field(default_factory=dict)


def window_details(window: ImportWindow) -> dict[str, Any]:
    """The window of an import as metadata: full or since which change, and through which."""
    return {
        "full_import": window.full,
        "since_change": window.since,
        "through_change": window.through,
    }


class FeatureStore(ABC):
    """Import records from the app database; fetch the text of many records at once."""

    @abstractmethod
    def import_records(self, *, full: bool = False) -> ImportResult:
        """Bring the records added or changed since the last import into the store.

        ``full`` moves every record instead (a rebuild). Idempotent; the watermark advances
        only when the import succeeded (``feature_import.py``).
        """

    @abstractmethod
    def fetch(self, record_ids: Sequence[int]) -> dict[int, str]:
        """Text by record id for the ids the store has; missing ids are simply absent."""

    @abstractmethod
    def list_records(self, limit: int) -> tuple[list[tuple[int, str]], int]:
        """The first ``limit`` records by id, and how many the store holds."""

    def close(self) -> None:
        """Release connections."""


class LocalFeatureStore(FeatureStore):
    """The ``features`` table: upsert by record id, many ids in one query."""

    TARGET = "local:features"

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def import_records(self, *, full: bool = False) -> ImportResult:
        """Upsert the window's changed records, then remove its deleted ones (a full import:
        every record not in ``data_points``), each chunk in a transaction of its own; one import
        at a time (``feature_import.import_lock``).

        Each row's ``feature_timestamp`` is the window's ``opened_at`` (the database's time of
        this import, increasing from import to import), as the Vertex store stamps its rows, not
        the writer's ``updated_at`` (the writing host's clock).
        """
        with feature_import.import_lock(self.engine, self.TARGET):
            return self._import_locked(full=full)

    def _import_locked(self, *, full: bool) -> ImportResult:
        window = feature_import.open_window(self.engine, self.TARGET, full=full)
        imported = 0
        for rows in feature_import.iter_changed(self.engine, window):
            with self.engine.begin() as connection:
                db.upsert(
                    connection,
                    db.features,
                    [
                        {"record_id": r.id, "text": r.text, "feature_timestamp": window.opened_at}
                        for r in rows
                    ],
                    key=["record_id"],
                    update=["text", "feature_timestamp"],
                )
                store_text_digests(connection, [(r.id, r.text) for r in rows], now=db.utcnow())
            imported += len(rows)
        removed = self._remove_gone() if full else self._remove_deleted(window)
        feature_import.commit_watermark(self.engine, window, imported)
        return ImportResult(
            rows_imported=imported,
            total_records=self._count(),
            details={**window_details(window), "rows_deleted": removed},
        )

    def _remove_deleted(self, window: ImportWindow) -> int:
        removed = 0
        table = db.features
        for record_ids in feature_import.iter_deleted(self.engine, window):
            with self.engine.begin() as connection:
                for chunk in chunked(record_ids, db.IN_CHUNK):
                    removed += connection.execute(
                        sa.delete(table).where(table.c.record_id.in_(chunk))
                    ).rowcount
        return removed

    def _remove_gone(self) -> int:
        """Features of records that no longer exist (a full import's rebuild)."""
        table, records = db.features, db.data_points
        with self.engine.begin() as connection:
            return connection.execute(
                sa.delete(table).where(~sa.exists().where(records.c.id == table.c.record_id))
            ).rowcount

    def upsert(self, records: Sequence[tuple[int, str]]) -> None:
        """Write features directly (a loader that skips ``data_points``, and tests); a full
        import removes those whose record is not in ``data_points``."""
        now = db.utcnow()
        with self.engine.begin() as connection:
            db.upsert(
                connection,
                db.features,
                [{"record_id": i, "text": t, "feature_timestamp": now} for i, t in records],
                key=["record_id"],
                update=["text", "feature_timestamp"],
            )
            store_text_digests(connection, records, now=now)

    def fetch(self, record_ids: Sequence[int]) -> dict[int, str]:
        found: dict[int, str] = {}
        ids = sorted(set(record_ids))
        table = db.features
        with self.engine.connect() as connection:
            for chunk in chunked(ids, db.IN_CHUNK):
                rows = connection.execute(
                    sa.select(table.c.record_id, table.c.text).where(table.c.record_id.in_(chunk))
                )
                found.update({row.record_id: row.text for row in rows})
        return found

    def list_records(self, limit: int) -> tuple[list[tuple[int, str]], int]:
        table = db.features
        with self.engine.connect() as connection:
            rows = connection.execute(
                sa.select(table.c.record_id, table.c.text).order_by(table.c.record_id).limit(limit)
            ).all()
        return [(row.record_id, row.text) for row in rows], self._count()

    def _count(self) -> int:
        with self.engine.connect() as connection:
            return connection.execute(
                sa.select(sa.func.count()).select_from(db.features)
            ).scalar_one()
