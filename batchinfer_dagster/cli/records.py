"""The commands that write records: ``add-data-point``, ``delete-data-point``,
``edit-data-point``, ``load`` and ``import-data`` (records into the feature store).

Each records what it did in the Dagster instance, so the UI shows it: the record commands as an
observation of ``data_points``, ``import-data`` as a run of the ``features`` asset.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from batchinfer_dagster.cli.arguments import record_id_argument
from batchinfer_dagster.cli.context import (
    connections_of,
    dagster_instance,
    engine_of,
    record_in_dagster,
    settings_of,
)
from batchinfer_dagster.cli.output import LIST_LIMIT, echo_json


@click.command("add-data-point")
@click.argument("text")
@click.pass_context
def add_data_point(ctx: click.Context, text: str) -> None:
    """Add one record and print it with the id the database gave it.

    Dagster's UI shows it as an observation of `data_points` (count, newest id, newest rows).

    \b
    Example:
      batchinfer add-data-point "I can't log in to my account"
      {"id": 1, "text": "I can't log in to my account"}
    """
    from batchinfer_dagster.defs import asset_events
    from batchinfer_dagster.records import add_records

    engine = engine_of(ctx)
    [record_id] = add_records(engine, [text])
    echo_json({"id": record_id, "text": text})
    record_in_dagster(ctx, lambda instance: asset_events.report_records_observed(instance, engine))


@click.command("delete-data-point")
@click.argument("record_id_text", metavar="RECORD_ID")
@click.pass_context
def delete_data_point(ctx: click.Context, record_id_text: str) -> None:
    """Delete a record and its predictions (an erasure request); exit 1 if there is none.

    The next `import-data` removes it from the feature store; a request for it from now on is
    dead-lettered "unknown record id".

    \b
    Example:
      batchinfer delete-data-point 1
      {"deleted": 1, "predictions_deleted": 1}
    """
    from batchinfer_dagster.defs import asset_events
    from batchinfer_dagster.records import delete_record

    record_id = record_id_argument(record_id_text)
    engine = engine_of(ctx)
    echo_json(delete_record(engine, record_id).document())
    record_in_dagster(ctx, lambda instance: asset_events.report_records_observed(instance, engine))


@click.command("edit-data-point")
@click.argument("record_id_text", metavar="RECORD_ID")
@click.argument("text")
@click.pass_context
def edit_data_point(ctx: click.Context, record_id_text: str, text: str) -> None:
    """Replace the text of a record; exit 1 when there is no such record.

    After the next `import-data` its prediction counts as stale in `status` (cause "text"),
    and `predict --stale` asks for it again.

    \b
    Example:
      batchinfer edit-data-point 1 "I still can't log in to my account"
      {"id": 1, "text": "I still can't log in to my account"}
    """
    from batchinfer_dagster.defs import asset_events
    from batchinfer_dagster.records import edit_record

    record_id = record_id_argument(record_id_text)
    engine = engine_of(ctx)
    if not edit_record(engine, record_id, text):
        click.echo(f"no record {record_id}", err=True)
        ctx.exit(1)
    echo_json({"id": record_id, "text": text})
    record_in_dagster(ctx, lambda instance: asset_events.report_records_observed(instance, engine))


@click.command("load")
@click.argument("file", type=click.Path(path_type=Path))
@click.pass_context
def load(ctx: click.Context, file: Path) -> None:
    """Bulk-load records from a UTF-8 CSV (column 'text'), a Parquet file (column 'text') or
    JSONL (field 'text'), chosen by the file's extension (.csv, .parquet, .jsonl).

    The whole file is checked first, so a bad line loads nothing.

    \b
    Examples:
      batchinfer load messages.jsonl
      {"loaded": 10000, "first_id": 1, "last_id": 10000}
      batchinfer load messages.parquet
    """
    from batchinfer_dagster.defs import asset_events
    from batchinfer_dagster.records import count_texts, load_file

    total = count_texts(file)
    engine = engine_of(ctx)
    with click.progressbar(length=total, label="loading", file=sys.stderr) as bar:
        first_last = load_file(engine, file, on_chunk=bar.update)
    first, last = (first_last + [None, None])[:2] if first_last else (None, None)
    echo_json({"loaded": total, "first_id": first, "last_id": last})
    record_in_dagster(ctx, lambda instance: asset_events.report_records_observed(instance, engine))


@click.command("import-data")
@click.option(
    "--full",
    is_flag=True,
    help="Move every record (a rebuild) instead of those added or changed since the last import.",
)
@click.pass_context
def import_data(ctx: click.Context, full: bool) -> None:
    """Import records added or changed since the last import; list what the store now holds.

    Runs the `features` asset in this process, as materializing it in Dagster's UI does: the
    UI lists the run (tagged batchinfer/source=cli import-data) and its materialization.

    \b
    Example:
      batchinfer import-data
      {"imported": 2, "records_in_feature_store": 2}
      {"id": 1, "text": "I can't log in to my account"}
      {"id": 2, "text": "The app crashes on my phone"}
    """
    from batchinfer_dagster.defs.deployments import resources_for
    from batchinfer_dagster.defs.feature_imports import materialize_features

    engine_of(ctx)
    # Secrets as EnvVar references: the run's records in the instance name the variable.
    resources = resources_for(settings_of(ctx), secrets_from_env=True)
    with dagster_instance(ctx) as instance:
        result = materialize_features(instance, resources.feature_store, full=full)
    echo_json(
        {
            "imported": result.rows_imported,
            "records_in_feature_store": result.total_records,
            **result.details,
        }
    )
    with connections_of(ctx).feature_store() as store:
        shown, total = store.list_records(LIST_LIMIT)
    for record_id, text in shown:
        echo_json({"id": record_id, "text": text})
    if total > len(shown):
        click.echo(f"... and {total - len(shown)} more ({total} records in all)")


COMMANDS: tuple[click.Command, ...] = (
    add_data_point,
    delete_data_point,
    edit_data_point,
    load,
    import_data,
)
