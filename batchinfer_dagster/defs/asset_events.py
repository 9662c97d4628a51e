"""The asset events of ``data_points`` and ``features``, built once for Dagster and the CLI.

Records are added two ways: by Dagster (observing ``data_points`` in the UI) and by the CLI
(``add-data-point``, ``load``). Both record the same observation with the same metadata, the CLI
as a runless event in the Dagster instance (``DagsterInstance.report_runless_asset_event``, the
API behind Dagster's "report asset events"), so the UI's lineage and freshness tell the truth
whichever way the user works. ``features`` has one producer, its asset: ``import-data`` runs it
(``defs.feature_imports``), and ``import_metadata`` is the metadata it records.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa
from dagster import (
    AssetKey,
    AssetMaterialization,
    AssetObservation,
    DagsterInstance,
    DataVersion,
    MetadataValue,
)
from dagster._core.definitions.data_version import DATA_VERSION_TAG

from batchinfer_dagster import db
from batchinfer_dagster.clients.feature_store import ImportResult

DATA_POINTS = AssetKey("data_points")
FEATURES = AssetKey("features")
SAMPLE_ROWS = 5


@dataclass(frozen=True)
class RecordsObservation:
    """What an observation of ``data_points`` records: metadata and the data version."""

    metadata: dict[str, object]
    data_version: DataVersion
    count: int
    newest_id: int | None


def _markdown_table(rows: list[tuple[int, str]]) -> str:
    lines = ["| id | text |", "|---|---|"]
    lines += [f"| {record_id} | {text[:200].replace('|', '/')} |" for record_id, text in rows]
    return "\n".join(lines)


def observe_records(engine: sa.Engine) -> RecordsObservation:
    """The records table now: count, newest id, the newest ``SAMPLE_ROWS`` rows.

    The data version is ``"<count>:<newest id>"``: it changes whenever records are added.
    """
    table = db.data_points
    with engine.connect() as connection:
        count, newest = connection.execute(
            sa.select(sa.func.count(), sa.func.max(table.c.id))
        ).one()
        sample = connection.execute(
            sa.select(table.c.id, table.c.text).order_by(table.c.id.desc()).limit(SAMPLE_ROWS)
        ).all()
    metadata: dict[str, object] = {
        "records": count,
        "newest_id": MetadataValue.int(newest or 0),
        "sample": MetadataValue.md(_markdown_table([(row.id, row.text) for row in sample])),
    }
    return RecordsObservation(metadata, DataVersion(f"{count}:{newest}"), count, newest)


def import_metadata(result: ImportResult, duration_seconds: float) -> dict[str, object]:
    """The metadata of a ``features`` materialization: rows imported, records held, seconds."""
    metadata: dict[str, object] = {
        "rows_imported": result.rows_imported,
        "total_records": result.total_records,
        "duration_s": MetadataValue.float(round(duration_seconds, 3)),
    }
    if result.details:
        metadata["details"] = MetadataValue.json(
            json.loads(json.dumps(result.details, default=str))
        )
    return metadata


def open_instance(dagster_home: Path) -> DagsterInstance:
    """The Dagster instance of ``dagster_home`` (its ``dagster.yaml``, or Dagster's defaults).

    The directory is created when missing, as ``dagster dev`` does for ``DAGSTER_HOME``. Opening
    a new home creates and migrates Dagster's SQLite storages, which two commands started
    together would race at (``table ... already exists``), so the opening holds a file lock in
    the home; once open, Dagster's storages handle concurrent writers themselves.
    """
    dagster_home.mkdir(parents=True, exist_ok=True)
    with db.file_lock(dagster_home / ".batchinfer-instance.lock"):
        return DagsterInstance.from_config(str(dagster_home))


def report_records_observed(instance: DagsterInstance, engine: sa.Engine) -> RecordsObservation:
    """Record an observation of ``data_points``, as observing it in the UI would."""
    observation = observe_records(engine)
    instance.report_runless_asset_event(
        AssetObservation(
            asset_key=DATA_POINTS,
            metadata=observation.metadata,
            tags={DATA_VERSION_TAG: observation.data_version.value},
        )
    )
    return observation


def report_features_materialized(
    instance: DagsterInstance, result: ImportResult, duration_seconds: float
) -> None:
    """Record a runless materialization of ``features`` (no import): for tests that need the
    event an import leaves, the sensor's cue that features may have arrived, without importing.
    The product never reports one: ``features`` is materialized by its asset alone."""
    instance.report_runless_asset_event(
        AssetMaterialization(asset_key=FEATURES, metadata=import_metadata(result, duration_seconds))
    )
