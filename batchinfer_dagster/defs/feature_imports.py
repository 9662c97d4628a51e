"""``batchinfer import-data``: a run that materializes ``features`` through the asset itself.

The command used to import on its own and then report a runless materialization, so
``features`` had two producers and the UI showed a materialization no run made. Now the CLI
executes the asset in its own process (Dagster's ``materialize``) against the deployment's
resources and the Dagster instance of ``DAGSTER_HOME``: the UI lists the run, the sensor sees
the materialization as after a click on "Materialize", and an error of the import is raised
as itself (the CLI shows the same one line as before).
"""

from __future__ import annotations

from typing import Any

from dagster import DagsterInstance, RunConfig, materialize

from batchinfer_dagster.clients.feature_store import ImportResult
from batchinfer_dagster.defs.assets import FeaturesConfig, features
from batchinfer_dagster.defs.resources.feature_store import FeatureStoreResource

# The tag that tells a CLI import's run from one launched in the UI.
SOURCE_TAG = "batchinfer/source"
# Dagster's console log would print each step's events (and a failure's traceback) between the
# command's own lines; the command reports the outcome itself.
QUIET = {"console": {"config": {"log_level": "CRITICAL"}}}


def import_result_of(metadata: dict[str, Any]) -> ImportResult:
    """The ``ImportResult`` a ``features`` materialization's metadata records
    (``asset_events.import_metadata``): rows imported, records held, the import's details."""
    details = metadata.get("details")
    return ImportResult(
        rows_imported=metadata["rows_imported"].value,
        total_records=metadata["total_records"].value,
        details=dict(details.value) if details is not None else {},
    )


def materialize_features(
    instance: DagsterInstance, feature_store: FeatureStoreResource, *, full: bool
) -> ImportResult:
    """Run ``features`` once in this process, recorded in ``instance``; what it imported.

    Raises the asset's own error (``DatabaseUnavailableError``, a Vertex AI error, …) when the
    import fails; the run is then recorded as failed.
    """
    result = materialize(
        [features],
        instance=instance,
        resources={"feature_store": feature_store},
        run_config=RunConfig(ops={"features": FeaturesConfig(full=full)}, loggers=QUIET),
        tags={SOURCE_TAG: "cli import-data"},
    )
    [materialization] = result.asset_materializations_for_node("features")
    return import_result_of(materialization.metadata)
