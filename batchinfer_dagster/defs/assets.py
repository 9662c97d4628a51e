"""The assets: ``data_points`` (observed), ``features`` and ``predictions`` (one partition per
ledger batch). Each has one producer, so every materialization of ``predictions`` carries its
checks. See docs/architecture.md for the data flow around them.
"""

import random
import time
import warnings

from dagster import (
    AssetExecutionContext,
    BetaWarning,
    Config,
    Failure,
    MaterializeResult,
    MetadataValue,
    ObserveResult,
    RetryRequested,
    asset,
    observable_source_asset,
)
from pydantic import Field

from batchinfer_dagster import rollout
from batchinfer_dagster.clients.model_client import TransientModelError
from batchinfer_dagster.defs.asset_events import import_metadata, observe_records
from batchinfer_dagster.defs.checks import PREDICTION_CHECK_SPECS, prediction_check_results
from batchinfer_dagster.defs.partitions import prediction_batches
from batchinfer_dagster.defs.resources.database import DatabaseResource
from batchinfer_dagster.defs.resources.feature_store import FeatureStoreResource
from batchinfer_dagster.defs.resources.ledger import LedgerResource
from batchinfer_dagster.defs.resources.model_server import ModelServerResource
from batchinfer_dagster.prediction import BatchOutcome, BatchRefusedError, Predictor

GROUP = "batchinfer"


def retry_delay(first_delay: float, retry_number: int) -> float:
    """Exponential backoff with ±50 % jitter, so retrying runs do not hit the server together."""
    return first_delay * 2**retry_number * random.uniform(0.5, 1.5)


# Observable source assets are beta in Dagster 1.13; they are the idiom for a table Dagster only
# watches, chosen knowingly, so the BetaWarning would only repeat on every load of the code
# location (and on every `make run`). Ignored for this one definition, nothing else.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", category=BetaWarning)

    @observable_source_asset(group_name=GROUP)
    def data_points(context: AssetExecutionContext, database: DatabaseResource) -> ObserveResult:
        """The records table, written by ``batchinfer add-data-point``, ``load`` or a loader.

        Dagster does not produce it, it only watches it: an observation records the count, the
        newest id and the newest rows, and its data version changes when records are added. The
        CLI records the same observation after it adds records (``asset_events``).
        """
        observation = observe_records(database.get_engine())
        context.log.info(
            "data_points holds %d records, newest id %s", observation.count, observation.newest_id
        )
        return ObserveResult(metadata=observation.metadata, data_version=observation.data_version)


class FeaturesConfig(Config):
    """What one materialization of ``features`` moves (run config, the UI's launchpad)."""

    full: bool = Field(
        default=False,
        description="Move every record (a rebuild) instead of those added or changed since the "
        "last import.",
    )


@asset(group_name=GROUP, deps=[data_points])
def features(
    context: AssetExecutionContext, config: FeaturesConfig, feature_store: FeatureStoreResource
) -> MaterializeResult:
    """Every record's text in the feature store, where prediction runs read it.

    Each materialization moves the records added or changed since the last import (a
    watermark in the app database); ``full`` (``batchinfer import-data --full``) rebuilds. The
    only producer of ``features``: ``import-data`` materializes it through this asset too.
    """
    started = time.perf_counter()
    with feature_store.open() as store:
        result = store.import_records(full=config.full)
    duration = time.perf_counter() - started
    context.log.info(
        "imported %d rows in %.1f s; the store holds %d records",
        result.rows_imported,
        duration,
        result.total_records,
    )
    return MaterializeResult(metadata=import_metadata(result, duration))


def outcome_metadata(outcome: BatchOutcome) -> dict[str, object]:
    predicted = len(outcome.predicted)
    rate = predicted / outcome.model_seconds if outcome.model_seconds > 0 else 0.0
    return {
        "requests": outcome.requests,
        "records": outcome.records,
        "predicted": predicted,
        "waiting_features": outcome.waiting,
        "dead_lettered": outcome.dead_lettered,
        "refused_by_model": outcome.refused,
        "model": outcome.model,
        # The receipt's configuration digest (`batchinfer lineage` shows what it stands for).
        "configuration": outcome.configuration,
        # A rollout's batch: its candidate digest; its rows are not current until promoted.
        "rollout": outcome.rollout or "none",
        "model_latency_s": MetadataValue.float(round(outcome.model_seconds, 3)),
        "texts_per_second": MetadataValue.float(round(rate, 1)),
        **(
            {"model_started_at": MetadataValue.timestamp(outcome.model_started_at)}
            if outcome.model_started_at is not None
            else {}
        ),
        "label_distribution": MetadataValue.json(outcome.label_counts),
    }


@asset(
    group_name=GROUP,
    deps=[features],
    partitions_def=prediction_batches,
    pool="model_server",
    check_specs=PREDICTION_CHECK_SPECS,
)
def predictions(
    context: AssetExecutionContext,
    ledger: LedgerResource,
    feature_store: FeatureStoreResource,
    model_server: ModelServerResource,
) -> MaterializeResult:
    """One prediction row per record of a ledger batch, upserted on (record_id, configuration).

    The configuration is the digest of the model (id and weights digest the server reports) and the
    request's parameters; each row carries its receipt (``receipts``). Re-materializing a partition
    recomputes the batch idempotently. Only transient model errors are retried within the run, by
    ``RetryRequested`` with the model server resource's backoff (a static ``RetryPolicy`` would also
    retry bugs and database errors, which the sensor's reconcile handles); a 4xx will not get
    better, so the batch's requests become dead letters at once.
    """
    engine = ledger.get_engine()
    parameters = model_server.parameters()
    # A rollout's candidate may be served elsewhere: its batches go to that server.
    model_url = rollout.model_url_of_batch(engine, context.partition_key)
    try:
        with feature_store.open() as store, model_server.open(model_url) as client:
            predictor = Predictor(
                engine=engine,
                feature_store=store,
                model=client,
                parameters=parameters,
                feature_wait=ledger.feature_wait(),
            )
            outcome = predictor.predict(context.partition_key, context.run.run_id)
    except TransientModelError as exc:
        delay = retry_delay(model_server.retry_delay_seconds, context.retry_number)
        context.log.warning("transient model error, retry in %.1f s: %s", delay, exc)
        raise RetryRequested(max_retries=model_server.retries, seconds_to_wait=delay) from exc
    except BatchRefusedError as exc:
        raise Failure(
            description=str(exc),
            metadata={"dead_lettered": exc.dead_lettered},
            allow_retries=False,
        ) from exc
    context.log.info(
        "batch %s: %d requests, %d records predicted by %s, %d waiting for features, "
        "%d dead letters",
        outcome.batch_key,
        outcome.requests,
        len(outcome.predicted),
        outcome.model or "no model",
        outcome.waiting,
        outcome.dead_lettered,
    )
    sent = outcome.parameters or parameters
    return MaterializeResult(
        metadata=outcome_metadata(outcome),
        check_results=prediction_check_results(
            engine,
            outcome.batch_key,
            model=outcome.model,
            labels=sent.candidate_labels,
            multi_label=sent.multi_label,
            rollout=outcome.rollout,
        ),
    )
