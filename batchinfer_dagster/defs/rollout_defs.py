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
- ``promote_rollout_job`` / ``discard_rollout_job``: the launchpad's ``rollout promote`` /
  ``rollout discard``.
"""

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

from batchinfer_dagster import rollout
from batchinfer_dagster.defs.assets import GROUP
from batchinfer_dagster.defs.jobs import launchpad_description
from batchinfer_dagster.defs.resources.ledger import LedgerResource

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
    }


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
