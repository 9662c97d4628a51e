"""``bigquery_predictions``: the predictions, exported to a BigQuery table (Google Cloud only).

A downstream asset of ``predictions``: each materialization moves the prediction rows written
or deleted since the last one (``prediction_changes``: numbered by the database in commit
order) into the table (``clients/bigquery_predictions``: load, then one MERGE keyed on record
and configuration). The watermark is the window's ``through``, kept in the materialization's
metadata (``exported_through``): a failed export materializes nothing, so the next one starts
from the same place and sends the same rows again (the MERGE makes that harmless).

It follows ``predictions`` by an automation condition rather than a schedule: an export runs
when a partition of ``predictions`` was materialized since the last export was requested, and
not while one is in progress, so an idle deployment runs nothing and a busy one exports within
a sensor interval of each batch, one export at a time. Not ``AutomationCondition.eager()``: it
waits while any dependency is missing, and ``predictions`` always has partitions that are not
(yet) materialized.

A transient failure (a BigQuery job failed with a 5xx or a rate limit: the client has already
retried the API calls themselves for up to 10 minutes, ``clients/bigquery_jobs``) is tried
again by Dagster's ``RetryPolicy`` within the same run, ``EXPORT_TRIES`` tries in all, with
exponential backoff and full jitter. The failures another try cannot mend fail at once with
``Failure(allow_retries=False)``: a BigQuery refusal (403, named with the table and the
permission), any other BigQuery error that is not transient (404, 400), a malformed prediction
row, a watermark ahead of the database. An error of no such kind (the app database
unreachable) is tried again like a transient one. A failed run materializes nothing; the next
batch's materialization requests the next export, which sends everything the failed one did;
``full: true`` in the run's config exports every row again.
"""

from dagster import (
    AssetExecutionContext,
    AutomationCondition,
    AutomationConditionSensorDefinition,
    Backoff,
    Config,
    DefaultSensorStatus,
    Failure,
    Jitter,
    MaterializeResult,
    MetadataValue,
    RetryPolicy,
    asset,
)
from pydantic import Field

from batchinfer_dagster.clients.bigquery_predictions import PredictionExportError
from batchinfer_dagster.defs.assets import GROUP, predictions
from batchinfer_dagster.defs.export_watermark import EXPORT_KEY, WATERMARK, exported_through
from batchinfer_dagster.defs.resources.prediction_export import PredictionExportResource
from batchinfer_dagster.prediction_changes import (
    ExportWindowError,
    MalformedPredictionError,
    open_window,
)
from batchinfer_dagster.settings import EXPORT_RETRY_DELAY_SECONDS, EXPORT_TRIES

EXPORT_CONDITION = (
    AutomationCondition.any_deps_updated().since_last_handled() & ~AutomationCondition.in_progress()
).with_label("predictions materialized since the last export, none in progress")
EXPORT_RETRY_POLICY = RetryPolicy(
    max_retries=EXPORT_TRIES - 1,
    delay=EXPORT_RETRY_DELAY_SECONDS,
    backoff=Backoff.EXPONENTIAL,
    jitter=Jitter.FULL,
)


class ExportConfig(Config):
    full: bool = Field(
        default=False,
        description="Export every prediction row, not only those written since the last export.",
    )


@asset(
    group_name=GROUP,
    deps=[predictions],
    automation_condition=EXPORT_CONDITION,
    retry_policy=EXPORT_RETRY_POLICY,
)
def bigquery_predictions(
    context: AssetExecutionContext,
    config: ExportConfig,
    prediction_export: PredictionExportResource,
) -> MaterializeResult:
    """The prediction receipts in BigQuery: one row per record and configuration, with labels,
    scores, top label, text digest, time, and whether it is its record's current prediction."""
    since = None if config.full else exported_through(context.instance)
    engine = prediction_export.database.get_engine()
    try:
        window = open_window(engine, since)
        with prediction_export.open() as target:
            exported = target.export(engine, window)
    except PredictionExportError as exc:
        if exc.transient:
            raise  # the retry policy tries again
        raise Failure(description=str(exc), allow_retries=False) from exc
    except (ExportWindowError, MalformedPredictionError) as exc:
        raise Failure(description=str(exc), allow_retries=False) from exc
    context.log.info(
        "exported %s to %s (changes %d..%d]",
        exported.describe(),
        prediction_export.table,
        window.since,
        window.through,
    )
    return MaterializeResult(
        metadata={
            WATERMARK: MetadataValue.int(window.through),
            "exported_since": MetadataValue.int(window.since),
            "rows_written": MetadataValue.int(exported.written),
            "rows_deleted": MetadataValue.int(exported.deleted),
            "table": MetadataValue.text(prediction_export.table),
        }
    )


bigquery_predictions_sensor = AutomationConditionSensorDefinition(
    "bigquery_predictions_sensor",
    target=[EXPORT_KEY],
    default_status=DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=30,
    description="Requests the BigQuery export when predictions were materialized since the last.",
)
