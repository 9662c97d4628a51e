"""The asset check that shows stale predictions in the UI: ``predictions_are_current``.

Not a check of one partition: staleness is a property of every record's current prediction,
changed by an import or a new label set as much as by a run. So it is a standalone check on
``predictions``, run from the asset's "Checks" tab or by ``stale_predictions_check_job`` (and
after ``request_stale_predictions_job``), never inside a prediction run, where it would count the
whole table once per batch. It warns (it never blocks): stale predictions are still answers, and
``batchinfer predict --stale`` or the launchpad job replaces them.
"""

from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetCheckSeverity,
    asset_check,
)

from batchinfer_dagster.defs.resources.ledger import LedgerResource
from batchinfer_dagster.defs.resources.model_server import ModelServerResource
from batchinfer_dagster.prediction import deployment_of
from batchinfer_dagster.staleness import stale_counts

PREDICTIONS_ARE_CURRENT = "predictions_are_current"


@asset_check(
    asset="predictions",
    name=PREDICTIONS_ARE_CURRENT,
    description="No record's current prediction is stale: its text, labels, template, label "
    "descriptions and model are the ones in use now. Warns with the counts by cause; "
    "`batchinfer predict --stale` (or request_stale_predictions_job) asks for them again.",
    blocking=False,
)
def predictions_are_current(
    context: AssetCheckExecutionContext,
    ledger: LedgerResource,
    model_server: ModelServerResource,
) -> AssetCheckResult:
    with model_server.open() as client:
        served = client.served_model()
    deployment = deployment_of(model_server.parameters(), served)
    counts = stale_counts(ledger.get_engine(), deployment)
    context.log.info("stale predictions: %s", counts)
    return AssetCheckResult(
        passed=counts["stale"] == 0,
        severity=AssetCheckSeverity.WARN,
        metadata={**counts, "model_checked": deployment.model is not None},
    )
