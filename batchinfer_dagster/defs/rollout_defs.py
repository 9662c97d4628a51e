"""The Dagster side of a rollout: the agreement report as an asset, its sensor, promote and discard.

A rollout's candidate predictions are made by ordinary ``predictions`` runs (``rollout``: its
ledger batches are partitions of ``prediction_batches`` like any other, with the candidate
digest in their ``rollout`` metadata). What is added here:

- ``rollout_report``: one partition per rollout (dynamic partitions ``rollouts``, key = the
  candidate's configuration digest); a materialization compares the candidate with the current
  predictions (``rollout.report``) and shows it as metadata: records compared, top-label
  agreement, agreement per current label, mean |Δ top score|, the confusion matrix and the
  largest disagreements as Markdown tables.
- ``rollout_reports_sensor``: registers each running rollout's partition and materializes its
  report once none of its requests is open (run key: candidate + counts, so a rollout started
  again for more records gets a new report).
- ``start_rollout_job``: the launchpad's ``rollout start`` (``StartRolloutConfig``: other
  labels, descriptions, another model server, a sample); ``begin_rollout`` is what both run.
- ``promote_rollout_job`` / ``discard_rollout_job``: the launchpad's ``rollout promote`` /
  ``rollout discard``.
"""

import dataclasses
from datetime import datetime

from dagster import (
    AssetExecutionContext,
    Config,
    DefaultSensorStatus,
    DynamicPartitionsDefinition,
    Failure,
    MaterializeResult,
    MetadataValue,
    OpExecutionContext,
    RunRequest,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    asset,
    define_asset_job,
    in_process_executor,
    job,
    op,
    sensor,
)
from pydantic import Field
from sqlalchemy import Engine

from batchinfer_dagster import db, rollout
from batchinfer_dagster.defs.assets import GROUP
from batchinfer_dagster.defs.jobs import launchpad_description
from batchinfer_dagster.defs.resources.ledger import LedgerResource
from batchinfer_dagster.defs.resources.model_server import ModelServerResource
from batchinfer_dagster.prediction import configuration_of
from batchinfer_dagster.receipts import UNKNOWN, ModelIdentity
from batchinfer_protocol.zero_shot import (
    ParameterError,
    PredictParameters,
    check_label_descriptions,
    check_labels,
)

ROLLOUTS = "rollouts"

rollouts = DynamicPartitionsDefinition(name=ROLLOUTS)


def markdown_table(header: list[str], rows: list[list[object]]) -> str:
    """A Markdown table (the UI renders ``MetadataValue.md``); cells are written with ``str``."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def report_metadata(report: rollout.RolloutReport, progress: rollout.Progress) -> dict:
    """The report's figures and tables as materialization metadata (what the UI shows)."""
    labels = sorted({*report.confusion, *(b for row in report.confusion.values() for b in row)})
    confusion = markdown_table(
        ["current ↓ / candidate →", *labels],
        [
            [now, *(report.confusion.get(now, {}).get(then, 0) for then in labels)]
            for now in sorted(report.confusion)
        ],
    )
    disagreements = markdown_table(
        ["record", "current", "score", "candidate", "score"],
        [
            [
                d["record_id"],
                d["current_label"],
                f"{d['current_score']:.3f}",
                d["candidate_label"],
                f"{d['candidate_score']:.3f}",
            ]
            for d in report.disagreements
        ],
    )
    return {
        "candidate": report.candidate,
        "status": str(progress.status),
        "records_requested": progress.requested,
        "requests_open": progress.open,
        "records_compared": report.compared,
        "top_label_agreement": MetadataValue.float(round(report.agreement, 4)),
        "agreement_per_label": MetadataValue.json(
            {label: round(1 - rate, 4) for label, rate in report.flip_rates().items()}
        ),
        "flip_rates": MetadataValue.json(
            {label: round(rate, 4) for label, rate in report.flip_rates().items()}
        ),
        "mean_abs_top_score_delta": MetadataValue.float(round(report.mean_abs_top_score_delta, 4)),
        "confusion_matrix": MetadataValue.md(confusion),
        "largest_disagreements": MetadataValue.md(disagreements),
        "models": MetadataValue.md(models_table(report)),
        "candidate_model_url": report.candidate_model_url or "the deployment's",
        "dead_letters": MetadataValue.json(report.dead_letters),
        "records_refused": report.dead_letters[rollout.DeadLetterKind.REFUSED],
        "records_missing": report.dead_letters[rollout.DeadLetterKind.MISSING],
        "texts_per_second": MetadataValue.json(
            {
                side: round(rate, 2) if rate is not None else None
                for side, rate in report.texts_per_second.items()
            }
        ),
    }


def models_table(report: rollout.RolloutReport) -> str:
    """Both sides' models (id, weights digest, configuration, records) as a Markdown table."""
    sides = [("current", side) for side in report.current_models]
    if report.candidate_model is not None:
        sides.append(("candidate", report.candidate_model))
    return markdown_table(
        ["side", "model", "weights digest", "configuration", "records"],
        [
            [name, side.model, side.model_digest, side.configuration, side.records]
            for name, side in sides
        ],
    )


@asset(group_name=GROUP, partitions_def=rollouts)
def rollout_report(context: AssetExecutionContext, ledger: LedgerResource) -> MaterializeResult:
    """How a rollout's candidate configuration agrees with the current predictions.

    Computed in SQL over the records that have both a current and a candidate row
    (``rollout.report``); the CLI's ``rollout report`` prints the same as JSON. Materialized by
    ``rollout_reports_sensor`` when the rollout's runs are done, or by hand at any time (a
    partial report while runs remain: ``requests_open`` says how many).
    """
    engine = ledger.get_engine()
    candidate = context.partition_key
    try:
        progress = rollout.progress(engine, candidate)
        report = rollout.report(engine, candidate)
    except rollout.UnknownCandidateError as exc:
        raise Failure(description=str(exc), allow_retries=False) from exc
    context.log.info(
        "rollout %s: %d compared, top-label agreement %.3f, %d requests open",
        candidate,
        report.compared,
        report.agreement,
        progress.open,
    )
    return MaterializeResult(metadata=report_metadata(report, progress))


rollout_report_job = define_asset_job(
    "rollout_report_job",
    selection=[rollout_report],
    executor_def=in_process_executor,
    description=(
        "Compare a rollout's candidate predictions with the current ones (the `rollout_report` "
        "partition of the rollout).\n\nLaunchpad config: none. Pick the partition (the candidate "
        "digest)."
    ),
)


@sensor(
    job=rollout_report_job,
    minimum_interval_seconds=30,
    default_status=DefaultSensorStatus.RUNNING,
    description="Register each rollout's report partition; report a rollout once its runs end.",
)
def rollout_reports_sensor(
    context: SensorEvaluationContext, ledger: LedgerResource
) -> SensorResult | SkipReason:
    """For each running rollout: its partition, and a report run once no request is open.

    Partitions are added by the tick itself (as ``prediction_requests_sensor`` does) so they
    exist when the run requests are read.
    """
    engine = ledger.get_engine()
    running = rollout.running_rollouts(engine)
    known = set(context.instance.get_dynamic_partitions(ROLLOUTS))
    if new := [key for key in running if key not in known]:
        context.instance.add_dynamic_partitions(ROLLOUTS, new)
    requests = []
    for candidate in running:
        progress = rollout.progress(engine, candidate)
        if progress.requested and not progress.open:
            requests.append(
                RunRequest(
                    run_key=f"{candidate}:{progress.requested}:{progress.predicted}",
                    partition_key=candidate,
                )
            )
    if not requests:
        return SkipReason(f"{len(running)} rollouts running, none finished")
    return SensorResult(run_requests=requests)


class StartRolloutConfig(Config):
    """Launchpad config of ``start_rollout_job``: what the candidate changes (unset: the
    deployment's), like ``batchinfer rollout start``'s options."""

    labels: list[str] | None = Field(
        default=None, description="Candidate labels instead of BATCHINFER_LABELS."
    )
    label_descriptions: dict[str, list[str]] | None = Field(
        default=None,
        description="{label: [description, ...]} instead of the deployment's descriptions.",
    )
    model_url: str | None = Field(
        default=None,
        description="Another model server for the candidate (its model and weights are part "
        "of the candidate's configuration); unset: the deployment's BATCHINFER_MODEL_URL.",
    )
    sample: int | None = Field(
        default=None, ge=1, description="Only the first N records with a current prediction."
    )


class RolloutStartError(ValueError):
    """The rollout cannot start as asked (bad labels or descriptions, a server that does not
    report its model); the message says which value and what to do."""


def candidate_parameters_of(
    parameters: PredictParameters,
    labels: list[str] | None,
    label_descriptions: dict[str, list[str]] | None,
) -> PredictParameters:
    """The deployment's parameters with the candidate's labels and descriptions, checked as
    the model server checks them (``ParameterError`` → ``RolloutStartError``)."""
    try:
        if labels is not None:
            parameters = dataclasses.replace(parameters, candidate_labels=check_labels(labels))
        if label_descriptions is not None:
            parameters = dataclasses.replace(
                parameters, label_descriptions=check_label_descriptions(label_descriptions)
            )
    except ParameterError as error:
        raise RolloutStartError(str(error)) from error
    return parameters


def begin_rollout(
    engine: Engine,
    model_server: ModelServerResource,
    parameters: PredictParameters,
    *,
    model_url: str | None,
    sample: int | None,
    batch_size: int,
    now: datetime,
) -> rollout.Started:
    """``rollout.start`` for the candidate of ``parameters`` on the server at ``model_url``
    (None: the deployment's), named by the model that server reports now.

    The CLI's ``rollout start`` and ``start_rollout_job`` both call this. Raises
    ``RolloutStartError`` when the server reports no model (a Vertex AI endpoint, or a server
    down or still loading): a candidate is named by its model and weights digest before any
    prediction; ``rollout.RolloutStateError`` for a promoted rollout.
    """
    try:
        with model_server.open(model_url) as client:
            served = client.served_model()
    except ValueError as error:  # a URL of the other kind (model_server.client)
        raise RolloutStartError(str(error)) from error
    if served is None:
        raise RolloutStartError(
            f"the model server {model_url or 'of the deployment'} does not report its model "
            "(down, still loading, or a Vertex AI endpoint): a rollout names its candidate by "
            "the model and its weights digest before predicting"
        )
    identity = ModelIdentity(served.model, served.model_digest or UNKNOWN)
    return rollout.start(
        engine,
        configuration_of(parameters, identity),
        rollout.current_records(engine, sample=sample),
        batch_size=batch_size,
        now=now,
        model_url=model_url,
    )


@op
def start_rollout(
    context: OpExecutionContext,
    config: StartRolloutConfig,
    ledger: LedgerResource,
    model_server: ModelServerResource,
) -> dict:
    """Write the rollout's ledger batches (``begin_rollout``); the sensor runs them."""
    try:
        started = begin_rollout(
            ledger.get_engine(),
            model_server,
            candidate_parameters_of(
                model_server.parameters(), config.labels, config.label_descriptions
            ),
            model_url=config.model_url,
            sample=config.sample,
            batch_size=ledger.batch_size,
            now=db.utcnow(),
        )
    except (RolloutStartError, rollout.RolloutStateError) as exc:
        raise Failure(description=str(exc), allow_retries=False) from exc
    context.log.info(
        "rollout %s: %d records requested in %d batches, %d skipped",
        started.candidate,
        started.requested,
        len(started.batch_keys),
        started.skipped,
    )
    return started.as_json()


class RolloutConfig(Config):
    """Launchpad config of ``promote_rollout_job`` and ``discard_rollout_job``."""

    candidate: str = Field(
        description="The candidate's configuration digest (`batchinfer rollout start` prints it)."
    )


@op
def promote_rollout(
    context: OpExecutionContext, config: RolloutConfig, ledger: LedgerResource
) -> None:
    """Make the candidate's predictions current in one transaction (``rollout.promote``)."""
    try:
        promoted = rollout.promote(ledger.get_engine(), config.candidate)
    except rollout.RolloutStateError as exc:
        raise Failure(description=str(exc), allow_retries=False) from exc
    context.log.info("rollout %s: %d predictions made current", config.candidate, promoted)


@op
def discard_rollout(
    context: OpExecutionContext, config: RolloutConfig, ledger: LedgerResource
) -> None:
    """Abort the rollout and delete its candidate rows (``rollout.discard``)."""
    discarded = rollout.discard(ledger.get_engine(), config.candidate)
    context.log.info(
        "rollout %s: discarded, %d candidate rows deleted", config.candidate, discarded
    )


EXAMPLE = RolloutConfig(candidate="5d8f" + "0" * 60)


@job(
    description=launchpad_description(
        "Start a rollout: predict the records that have a current prediction again under a "
        "candidate configuration (other labels, descriptions or model server), beside the "
        "current predictions (`batchinfer rollout start`). The op's output is the candidate's "
        "digest and counts.",
        "start_rollout",
        StartRolloutConfig(labels=["billing", "mobile"], model_url="http://127.0.0.1:8081"),
    )
)
def start_rollout_job() -> None:
    start_rollout()


@job(
    description=launchpad_description(
        "Promote a rollout: its candidate predictions become current (`batchinfer rollout "
        "promote`). Refused while the rollout's requests are open.",
        "promote_rollout",
        EXAMPLE,
    )
)
def promote_rollout_job() -> None:
    promote_rollout()


@job(
    description=launchpad_description(
        "Abort a rollout: later runs of its batches write nothing, its candidate rows are "
        "deleted (`batchinfer rollout discard`).",
        "discard_rollout",
        EXAMPLE,
    )
)
def discard_rollout_job() -> None:
    discard_rollout()
