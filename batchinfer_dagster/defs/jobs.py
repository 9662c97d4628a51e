"""Jobs: the partitioned job the sensor launches, and the launchpad's way to request records."""

import yaml
from dagster import (
    AssetSelection,
    Config,
    OpExecutionContext,
    define_asset_job,
    in_process_executor,
    job,
    op,
)
from pydantic import Field

from batchinfer_dagster import db
from batchinfer_dagster.defs.assets import predictions
from batchinfer_dagster.defs.partitions import PREDICTION_BATCHES
from batchinfer_dagster.defs.resources.ledger import LedgerResource
from batchinfer_dagster.defs.resources.model_server import ModelServerResource
from batchinfer_dagster.defs.stale_check import predictions_are_current
from batchinfer_dagster.ledger import create_batches
from batchinfer_dagster.prediction import deployment_of
from batchinfer_dagster.staleness import iter_stale, record_requested


def launchpad_description(summary: str, op_name: str, example: Config) -> str:
    """A job's description with the launchpad config to paste, as YAML (Markdown in the UI).

    The YAML is made from ``example``, an instance of the op's own ``Config`` class, so it always
    has the fields the job takes; a test validates it against the job's config schema.
    """
    config = {"ops": {op_name: {"config": example.model_dump(mode="json")}}}
    snippet = yaml.safe_dump(config, sort_keys=False, default_flow_style=None).strip()
    return f"{summary}\n\nLaunchpad config:\n\n```yaml\n{snippet}\n```"


# One step (the asset and its checks): the in-process executor runs it in the run worker itself.
# The default multiprocess executor would start a second Python process per run, importing the
# code location again, for no parallelism (docs/benchmarks.md, "Backlog through the daemon's
# launcher").
predictions_job = define_asset_job(
    "predictions_job",
    # The asset and its per-batch checks; the whole-table staleness check runs on its own.
    selection=AssetSelection.assets(predictions) - AssetSelection.checks(predictions_are_current),
    executor_def=in_process_executor,
    description=(
        "Predict one ledger batch (a partition of `predictions`); the sensor launches one run "
        "per batch.\n\nLaunchpad config: none. Pick the partition (the batch key) to run "
        "again; its requests are predicted again in place."
    ),
)


class RequestPredictionsConfig(Config):
    """Launchpad config of ``request_predictions_job``."""

    record_ids: list[int] = Field(description="Record ids to predict, e.g. [1, 2, 3].")


@op
def request_predictions(
    context: OpExecutionContext, config: RequestPredictionsConfig, ledger: LedgerResource
) -> None:
    """Write requests for the chosen ids into the ledger as new batches (partitions).

    The sensor's next tick launches a ``predictions_job`` run per batch, so the launchpad path
    ends in ordinary ``predictions`` materializations with their checks, like the queue's path.
    No retry policy: a retry would write the requests again.
    """
    if not config.record_ids:
        raise ValueError("record_ids is empty: give at least one record id, e.g. [1, 2, 3]")
    batch_keys = create_batches(
        ledger.get_engine(),
        config.record_ids,
        source="manual",
        batch_size=ledger.batch_size,
        now=db.utcnow(),
    )
    context.instance.add_dynamic_partitions(PREDICTION_BATCHES, batch_keys)
    context.log.info(
        "requested %d records in batches %s; the sensor launches their runs",
        len(config.record_ids),
        batch_keys,
    )


@job(
    description=launchpad_description(
        "Request predictions of chosen record ids; the sensor launches their `predictions` runs.",
        "request_predictions",
        RequestPredictionsConfig(record_ids=[1, 2, 3]),
    )
)
def request_predictions_job() -> None:
    request_predictions()


# The whole-table staleness check alone, to run or schedule by itself (the UI's Checks tab runs
# it too).
check_stale_predictions_job = define_asset_job(
    "check_stale_predictions_job",
    selection=AssetSelection.checks(predictions_are_current),
    executor_def=in_process_executor,
    description=(
        "Count stale predictions by cause (the `predictions_are_current` check).\n\n"
        "Launchpad config: none."
    ),
)


@op
def request_stale_predictions(
    context: OpExecutionContext, ledger: LedgerResource, model_server: ModelServerResource
) -> None:
    """Write requests for every stale, not yet requested prediction into the ledger.

    The launchpad's ``batchinfer predict --stale``: the same stale predictions, each requested
    once (``staleness.record_requested``), as new batches the sensor launches runs for.
    """
    with model_server.open() as client:
        served = client.served_model()
    deployment = deployment_of(model_server.parameters(), served)
    engine = ledger.get_engine()
    requested = 0
    for page in iter_stale(engine, deployment, unrequested_only=True):
        batch_keys = create_batches(
            engine,
            [item.record_id for item in page],
            source="stale",
            batch_size=ledger.batch_size,
            now=db.utcnow(),
        )
        context.instance.add_dynamic_partitions(PREDICTION_BATCHES, batch_keys)
        record_requested(engine, page, now=db.utcnow())
        requested += len(page)
    context.log.info(
        "requested %d stale predictions (model checked: %s); the sensor launches their runs",
        requested,
        deployment.model is not None,
    )


@job(
    description=(
        "Request exactly the stale predictions, each once (`batchinfer predict --stale`); the "
        "sensor launches their `predictions` runs.\n\nLaunchpad config: none."
    )
)
def request_stale_predictions_job() -> None:
    request_stale_predictions()
