"""``InMemoryFeatureStore``: the feature store contract (``clients/feature_store.py``) in dicts.

Records are added to ``source`` (the app database's place); ``import_records`` makes them
fetchable, as a sync does, so a test can hold a record back from the store and release it.
"""

from __future__ import annotations

from collections.abc import Sequence

from batchinfer_dagster.clients.feature_store import FeatureStore, ImportResult


class InMemoryFeatureStore(FeatureStore):
    """``source`` → ``import_records`` → ``fetch``; every import moves the whole source (small)."""

    def __init__(self) -> None:
        self.source: dict[int, str] = {}
        self.features: dict[int, str] = {}
        self.imports = 0

    def add(self, texts: dict[int, str]) -> None:
        """Records written to the source, fetchable after the next import."""
        self.source.update(texts)

    def import_records(self, *, full: bool = False) -> ImportResult:
        changed = {i: t for i, t in self.source.items() if self.features.get(i) != t}
        if full:
            self.features.clear()
            changed = dict(self.source)
        self.features.update(changed)
        self.imports += 1
        return ImportResult(rows_imported=len(changed), total_records=len(self.features))

    def fetch(self, record_ids: Sequence[int]) -> dict[int, str]:
        return {i: self.features[i] for i in record_ids if i in self.features}

    def list_records(self, limit: int) -> tuple[list[tuple[int, str]], int]:
        ordered = sorted(self.features.items())
        return ordered[:limit], len(ordered)
