"""How far the BigQuery export has got, read from Dagster's event log (no dagster-gcp import).

The export asset (``prediction_export.py``) keeps its watermark, the last prediction change
number it moved, in its materialization's metadata; retention (``retention.py``) reads it to
know which tombstones no export needs any more. Both live on every deployment's code location:
this module imports Dagster only, so a laptop without dagster-gcp can run retention.
"""

from __future__ import annotations

from dagster import AssetKey, DagsterInstance

EXPORT_KEY = AssetKey("bigquery_predictions")
WATERMARK = "exported_through"


def exported_through(instance: DagsterInstance) -> int | None:
    """``exported_through`` of the export's latest materialization; None before the first."""
    event = instance.get_latest_materialization_event(EXPORT_KEY)
    if event is None or event.asset_materialization is None:
        return None
    value = event.asset_materialization.metadata.get(WATERMARK)
    return None if value is None else int(value.value)


def export_tried(instance: DagsterInstance) -> bool:
    """Whether an export run was ever launched (Dagster plans its materialization at launch,
    whether the run then succeeds or not)."""
    return bool(instance.fetch_planned_materializations(EXPORT_KEY, limit=1).records)


def tombstones_prunable_through(instance: DagsterInstance, horizon: int) -> int:
    """The highest tombstone number retention may delete, ``horizon`` being the committed one.

    - an export succeeded: its watermark (the next export starts after it);
    - an export was tried and none succeeded: 0, nothing (the first success starts from 0 and
      must still find every tombstone);
    - no export was ever tried (a deployment without BigQuery): ``horizon``, everything (a
      first export starts from an empty table, which has no row a tombstone would delete).
    """
    watermark = exported_through(instance)
    if watermark is not None:
        return min(watermark, horizon)
    return 0 if export_tried(instance) else horizon
