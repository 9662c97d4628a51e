"""``batchinfer rollout start|report|promote|discard``: a candidate configuration
predicted beside the current predictions, compared, then promoted or discarded.
"""

from __future__ import annotations

from pathlib import Path

import click

from batchinfer_dagster.cli.arguments import candidate_options, candidate_parameters
from batchinfer_dagster.cli.context import engine_of, resources_of, settings_of
from batchinfer_dagster.cli.output import echo_json


@click.group("rollout")
def rollout_group() -> None:
    """Try a candidate configuration beside the current predictions, compare, then promote."""


@rollout_group.command("start")
@candidate_options
@click.option("--sample", type=click.IntRange(min=1), help="Only the first N predicted records.")
@click.option(
    "--model-url",
    help="Another model server for the candidate (its model and weights name the candidate); "
    "default: BATCHINFER_MODEL_URL.",
)
@click.pass_context
def rollout_start(
    ctx: click.Context,
    labels: str | None,
    descriptions_file: Path | None,
    sample: int | None,
    model_url: str | None,
) -> None:
    """Predict the records that have a current prediction again under a candidate configuration
    (other --labels, --label-descriptions or --model-url), beside the current predictions, never
    current. The UI's `start_rollout_job` does the same.

    Writes ledger batches that the sensor runs as ordinary `predictions` partitions (visible in
    the UI, retried and resumed like any batch); the `rollout_report` asset reports when they
    are done. Prints the candidate's configuration digest for `rollout report|promote|discard`.
    Running it again requests only the records with neither a candidate prediction nor an open
    request.

    \b
    Example:
      batchinfer rollout start --label-descriptions new-descriptions.json --sample 500
      {"candidate": "5d8f...", "requested": 500, "skipped": 0, "batches": 8}
      batchinfer rollout start --model-url http://127.0.0.1:8081
    """
    from batchinfer_dagster import db, rollout
    from batchinfer_dagster.defs.rollout_defs import RolloutStartError, begin_rollout

    model_server = resources_of(ctx).model_server
    parameters = candidate_parameters(model_server.parameters(), labels, descriptions_file)
    try:
        started = begin_rollout(
            engine_of(ctx),
            model_server,
            parameters,
            model_url=model_url,
            sample=sample,
            batch_size=settings_of(ctx).batch_size,
            now=db.utcnow(),
        )
    except (RolloutStartError, rollout.RolloutStateError) as error:
        raise click.ClickException(str(error)) from error
    echo_json(started.as_json())


@rollout_group.command("report")
@click.argument("candidate")
@click.pass_context
def rollout_report(ctx: click.Context, candidate: str) -> None:
    """Compare a candidate's predictions with the current ones of the same records.

    \b
    Example:
      batchinfer rollout report 5d8f...
      {"compared": 500, "agreement": 0.93, "confusion": {...}, "flip_rates": {...}, ...}
    """
    from batchinfer_dagster import rollout

    try:
        echo_json(rollout.summary(engine_of(ctx), candidate))
    except rollout.UnknownCandidateError as error:
        raise click.ClickException(str(error)) from error


@rollout_group.command("promote")
@click.argument("candidate")
@click.pass_context
def rollout_promote(ctx: click.Context, candidate: str) -> None:
    """Make a candidate's predictions current, in one transaction (the old rows stay).

    Set BATCHINFER_LABELS / BATCHINFER_LABEL_DESCRIPTIONS_FILE to the candidate's as well, or
    `status` counts the promoted predictions stale by their parameters.
    """
    from batchinfer_dagster import rollout

    try:
        promoted = rollout.promote(engine_of(ctx), candidate)
    except rollout.RolloutStateError as error:
        raise click.ClickException(str(error)) from error
    echo_json({"candidate": candidate, "promoted": promoted})


@rollout_group.command("discard")
@click.argument("candidate")
@click.pass_context
def rollout_discard(ctx: click.Context, candidate: str) -> None:
    """Abort a rollout: its batches still to run write nothing, and its candidate predictions
    (those not current) are deleted."""
    from batchinfer_dagster import rollout

    echo_json({"candidate": candidate, "discarded": rollout.discard(engine_of(ctx), candidate)})


COMMANDS: tuple[click.Command, ...] = (rollout_group,)
