"""The commands that read predictions: ``prediction``, ``lineage``, ``export``,
and ``evaluate`` (accuracy on labelled texts through the model server, nothing stored).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from batchinfer_dagster.cli.arguments import (
    candidate_options,
    candidate_parameters,
    record_id_argument,
)
from batchinfer_dagster.cli.context import (
    connections_of,
    current_deployment,
    engine_of,
    resources_of,
)
from batchinfer_dagster.cli.output import echo_json, missing_records_line

if TYPE_CHECKING:
    from batchinfer_dagster.queries import StoredPrediction


@click.command("lineage")
@click.argument("record_id_text", metavar="RECORD_ID")
@click.pass_context
def lineage(ctx: click.Context, record_id_text: str) -> None:
    """Print a record's predictions with their receipts: the current one first (with why it is
    stale, if it is), then the earlier ones of other configurations, newest first.

    A receipt says what made the prediction: the model and its weights digest, the candidate
    labels, the template, the label descriptions (and their digest), multi_label, the digest of
    the text classified, the run and the ledger batch. Exit 1 for an unknown record.

    \b
    Example:
      batchinfer lineage 1
      {"record": {"id": 1, "text": "...", "imported_text_digest": "..."},
       "predictions": [{"configuration": "...", "current": true, "stale": [], "receipt": {...}}]}
    """
    from batchinfer_dagster.lineage import record_lineage

    record_id = record_id_argument(record_id_text)
    engine = engine_of(ctx)
    document = record_lineage(engine, record_id, current_deployment(connections_of(ctx)))
    if document is None:
        click.echo(f"no record {record_id} and no prediction of it", err=True)
        ctx.exit(1)
    echo_json(document)


def prediction_document(stored: StoredPrediction) -> dict[str, Any]:
    """``{"data", "prediction": {"sequence", "labels", "scores"}}``: the record's text (what the
    model saw when the record is gone) and the ranked answer."""
    return {
        "data": stored.text if stored.text is not None else stored.sequence,
        "prediction": {
            "sequence": stored.sequence,
            "labels": stored.labels,
            "scores": stored.scores,
        },
    }


@click.command("prediction")
@click.argument("record_id_text", metavar="RECORD_ID")
@click.option("--model", help="Only predictions of this model id (default: the newest of any).")
@click.pass_context
def prediction(ctx: click.Context, record_id_text: str, model: str | None) -> None:
    """Print the stored prediction of a record as JSON; exit 1 when there is none yet, or when
    the record does not exist.

    \b
    Example:
      batchinfer prediction 1
      {"data": "...", "prediction": {"sequence": "...", "labels": [...], "scores": [...]}}
    """
    from batchinfer_dagster.queries import missing_records, prediction_of

    record_id = record_id_argument(record_id_text)
    engine = engine_of(ctx)
    stored = prediction_of(engine, record_id, model)
    if stored is None:
        if missing_records(engine, [record_id]):
            click.echo(missing_records_line([record_id]), err=True)
        else:
            click.echo(f"no prediction for record {record_id} yet", err=True)
        ctx.exit(1)
    echo_json(prediction_document(stored))


@click.command("export")
@click.argument("file", type=click.Path(path_type=Path))
@click.option(
    "--since",
    help="Only predictions stored at or after this ISO 8601 time (UTC unless it names a zone).",
)
@click.option(
    "--all-configurations",
    is_flag=True,
    help="Every stored prediction of each record (earlier models, labels, templates), "
    "not only its current one; the current column tells them apart.",
)
@click.pass_context
def export(ctx: click.Context, file: Path, since: str | None, all_configurations: bool) -> None:
    """Write the predictions to a CSV, JSONL or Parquet file (by its extension).

    One row per record: its current prediction, the one `batchinfer prediction` shows. Columns:
    record_id, configuration, current, model, label and score (the top one), labels and scores
    (ranked), predicted_at. With --all-configurations, also the rows of each record's other
    configurations (current false). Streamed in chunks, so any number of rows fits in memory;
    the file appears only once complete.

    \b
    Examples:
      batchinfer export predictions.parquet
      {"exported": 10000, "file": "predictions.parquet"}
      batchinfer export --since 2026-12-05T09:00:00Z today.csv
      batchinfer export --all-configurations history.jsonl
    """
    from batchinfer_dagster.export import export_format, export_predictions, parse_since

    export_format(file)
    moment = parse_since(since) if since is not None else None
    count = export_predictions(engine_of(ctx), file, moment, all_configurations=all_configurations)
    echo_json({"exported": count, "file": str(file)})


# Texts per predict call of `evaluate`: the progress bar moves every chunk; the client splits
# each call into its own request chunks (chunk_size) and sends them concurrently.
EVALUATE_CHUNK = 1024


@click.command("evaluate")
@click.argument("file", type=click.Path(path_type=Path))
@candidate_options
@click.option(
    "--model-url",
    help="Evaluate the model of another model server (a candidate, as `rollout start "
    "--model-url` names one), with the deployment's timeouts and auth; default: "
    "BATCHINFER_MODEL_URL.",
)
@click.pass_context
def evaluate_command(
    ctx: click.Context,
    file: Path,
    labels: str | None,
    descriptions_file: Path | None,
    model_url: str | None,
) -> None:
    """Measure accuracy on your own labelled texts, through the model server.

    FILE is a CSV (columns text, label) or JSONL (fields text, label). Prints accuracy,
    precision and recall per label, and the confusion matrix {true: {predicted: count}}, for
    the deployment's labels and descriptions, or for --labels / --label-descriptions to try
    before switching, on the deployment's model server or a candidate's (--model-url). The
    model and weights digest that answered are printed with the figures. Nothing is stored.

    \b
    Example:
      batchinfer evaluate labelled.csv
      {"examples": 200, "accuracy": 0.87, "per_label": {"billing": {"precision": 0.9, ...}},
       "confusion": {"billing": {"billing": 45, "account access": 5}, ...}, ...}
      batchinfer evaluate labelled.csv --model-url http://127.0.0.1:8081
    """
    from batchinfer_dagster.chunks import chunked
    from batchinfer_dagster.clients.model_client import ModelError, RefusedText
    from batchinfer_dagster.evaluation import evaluate, read_labelled
    from batchinfer_dagster.prediction import configuration_of
    from batchinfer_dagster.receipts import UNKNOWN, ModelIdentity

    examples = read_labelled(file)
    model_server = resources_of(ctx).model_server
    parameters = candidate_parameters(model_server.parameters(), labels, descriptions_file)
    pairs: list[tuple[str, str]] = []
    refused: list[dict[str, str]] = []
    identity = ModelIdentity("")
    try:
        with (
            model_server.open(model_url) as client,
            click.progressbar(length=len(examples), label="classifying", file=sys.stderr) as bar,
        ):
            for chunk in chunked(examples, EVALUATE_CHUNK):
                answer = client.predict([example.text for example in chunk], parameters)
                for example, result in zip(chunk, answer.answers, strict=True):
                    if isinstance(result, RefusedText):
                        refused.append({"where": example.where, "error": result.reason})
                    else:
                        pairs.append((example.label, result.labels[0]))
                if answer.model:
                    identity = ModelIdentity(answer.model, answer.model_digest or UNKNOWN)
                bar.update(len(chunk))
    except ValueError as error:  # a URL of the other kind (ModelServerResource.client)
        raise click.ClickException(str(error)) from error
    except ModelError as error:
        raise click.ClickException(
            f"the model server {model_url or 'of the deployment'} did not classify the texts: "
            f"{error}"
        ) from error
    figures = evaluate(pairs, parameters.candidate_labels)
    echo_json(
        {
            **figures.as_json(),
            "labels_not_candidates": list(figures.labels[len(parameters.candidate_labels) :]),
            "refused": refused,
            "model": identity.name,
            "model_digest": identity.weights_digest,
            "model_url": model_url,  # None: the deployment's (BATCHINFER_MODEL_URL)
            "configuration": configuration_of(parameters, identity).digest,
        }
    )


COMMANDS: tuple[click.Command, ...] = (lineage, prediction, export, evaluate_command)
