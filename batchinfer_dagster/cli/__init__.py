"""The ``batchinfer`` command: add, load, import, publish, inspect — and the operator's tools.

Every command reads the one ``Settings`` object and builds its clients through the same resources
as the code location (``batchinfer_dagster.defs.deployments``), so the same commands drive the
embedded defaults and production. Failures a user can cause or fix (bad input, a server that is
down, a schema to migrate) end as one line on stderr and a non-zero exit, never as a traceback.

Only ``click`` and the settings are imported up front: each command imports what it needs
(SQLAlchemy, the ledger, Dagster's resources, pandas), so ``--version``, ``--help`` and ``where``
never pay for Dagster or pandas, and ``prediction`` does not pay for pandas.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from batchinfer_dagster.settings import Settings, load_settings

if TYPE_CHECKING:
    import sqlalchemy as sa
    from dagster import DagsterInstance

    from batchinfer_dagster import staleness
    from batchinfer_dagster.defs.deployments import Resources
    from batchinfer_dagster.queries import StoredPrediction
    from batchinfer_protocol.zero_shot import PredictParameters

# Messages per publish call: a progress bar that moves, and bounded memory per call.
PUBLISH_CHUNK = 1000
LIST_LIMIT = 20
WAITING_SHOWN = 5
STATE_KEYS = ("home", "dagster_home", "database", "queue", "feature_store", "model_url")


class InvalidRecordIdError(ValueError):
    """A record id given on the command line that is not one of 1..2^63-1."""


# Errors that mean "the user or the environment must change something", shown as one line,
# by module and class name: the commands import their modules lazily, and an error of a module
# that was never imported cannot have been raised, so none is imported to look for it.
USER_ERRORS = (
    ("batchinfer_dagster.settings", "SettingsError"),
    ("batchinfer_dagster.export", "ExportError"),
    ("batchinfer_dagster.records", "InvalidRecordError"),
    ("batchinfer_dagster.records", "UnknownRecordError"),
    ("batchinfer_dagster.clients.queue", "InvalidMessageError"),
    ("batchinfer_dagster.clients.queue", "QueueUnavailableError"),
    ("batchinfer_dagster.db", "DatabaseUnavailableError"),
    ("batchinfer_dagster.db", "SchemaOutOfDateError"),
)


def _user_error_types() -> tuple[type[BaseException], ...]:
    """The classes of ``USER_ERRORS`` whose modules are loaded, and ``InvalidRecordIdError``."""
    loaded = [
        getattr(sys.modules[module], name) for module, name in USER_ERRORS if module in sys.modules
    ]
    return (InvalidRecordIdError, *loaded)


class BatchinferGroup(click.Group):
    """Turns known failures into one clear line on stderr and exit status 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except Exception as exc:
            if isinstance(exc, _user_error_types()):
                raise click.ClickException(str(exc)) from exc
            operational = sys.modules.get("sqlalchemy.exc")
            if operational is not None and isinstance(exc, operational.OperationalError):
                raise click.ClickException(
                    f"database error: {' '.join(str(exc.orig).split())}"
                ) from exc
            raise


@click.group(cls=BatchinferGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="batchinfer", message="%(prog)s %(version)s")
@click.pass_context
def cli(ctx: click.Context) -> None:
    """batchinfer: offline zero-shot classification of records, orchestrated by Dagster.

    Configuration comes from BATCHINFER_* environment variables; with none set, everything runs
    on embedded defaults in the user data directory (SQLite, a local queue, a local feature
    store), whatever the current directory. `batchinfer where` says which database, queue,
    feature store and Dagster instance the commands use.
    """
    ctx.obj = load_settings()


def _settings(ctx: click.Context) -> Settings:
    return ctx.find_root().obj


def _resources(ctx: click.Context) -> Resources:
    from batchinfer_dagster.defs.deployments import resources_for

    return resources_for(_settings(ctx))


def _engine(ctx: click.Context) -> sa.Engine:
    """The app database; the embedded SQLite one is migrated on first use.

    On a laptop the CLI is the first thing a user runs, so it creates its own database. Any
    other database is migrated only by ``batchinfer db upgrade`` (the deploy run does it).
    Built from the settings' URL, as ``DatabaseResource`` builds it, without Dagster's resources.
    """
    from batchinfer_dagster import db

    url = _settings(ctx).resolved_database_url
    if db.is_sqlite(url):
        engine = db.create_app_engine(url)
        try:
            if db.current_revision(engine) != db.head_revision():
                db.upgrade(engine)
        finally:
            engine.dispose()
    return db.engine_for(url)


def _record_in_dagster(ctx: click.Context, report: Callable[[DagsterInstance], object]) -> None:
    """Record an asset event in the Dagster instance of ``DAGSTER_HOME`` (``batchinfer where``).

    The data is already written when this runs, so a failure here does not fail the command: it
    is one line on stderr naming the instance, and the UI shows the event after the next
    observation or materialization.
    """
    from batchinfer_dagster.defs import asset_events

    home = _settings(ctx).resolved_dagster_home
    try:
        with asset_events.open_instance(home) as instance:
            report(instance)
    except Exception as error:  # noqa: BLE001 - any failure of the instance is reported alike
        click.echo(
            f"warning: the Dagster instance in {home} did not record this "
            f"({type(error).__name__}: {' '.join(str(error).split())[:200]}); "
            "observe data_points or materialize features in the UI to update it",
            err=True,
        )


def _echo_json(value: object) -> None:
    click.echo(json.dumps(value, ensure_ascii=False))


@cli.command("add-data-point")
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

    engine = _engine(ctx)
    [record_id] = add_records(engine, [text])
    _echo_json({"id": record_id, "text": text})
    _record_in_dagster(ctx, lambda instance: asset_events.report_records_observed(instance, engine))


@cli.command("delete-data-point")
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
    engine = _engine(ctx)
    _echo_json(delete_record(engine, record_id).document())
    _record_in_dagster(ctx, lambda instance: asset_events.report_records_observed(instance, engine))


@cli.command("edit-data-point")
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
    engine = _engine(ctx)
    if not edit_record(engine, record_id, text):
        click.echo(f"no record {record_id}", err=True)
        ctx.exit(1)
    _echo_json({"id": record_id, "text": text})
    _record_in_dagster(ctx, lambda instance: asset_events.report_records_observed(instance, engine))


@cli.command("load")
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
    engine = _engine(ctx)
    with click.progressbar(length=total, label="loading", file=sys.stderr) as bar:
        first_last = load_file(engine, file, on_chunk=bar.update)
    first, last = (first_last + [None, None])[:2] if first_last else (None, None)
    _echo_json({"loaded": total, "first_id": first, "last_id": last})
    _record_in_dagster(ctx, lambda instance: asset_events.report_records_observed(instance, engine))


@cli.command("import-data")
@click.option(
    "--full",
    is_flag=True,
    help="Move every record (a rebuild) instead of those added or changed since the last import.",
)
@click.pass_context
def import_data(ctx: click.Context, full: bool) -> None:
    """Import records added or changed since the last import; list what the store now holds.

    Dagster's UI shows it as a materialization of `features`, the same as materializing it there.

    \b
    Example:
      batchinfer import-data
      {"imported": 2, "records_in_feature_store": 2}
      {"id": 1, "text": "I can't log in to my account"}
      {"id": 2, "text": "The app crashes on my phone"}
    """
    from batchinfer_dagster.defs import asset_events

    _engine(ctx)
    with _resources(ctx).feature_store.open() as store:
        started = time.perf_counter()
        result = store.import_records(full=full)
        duration = time.perf_counter() - started
        _record_in_dagster(
            ctx,
            lambda instance: asset_events.report_features_materialized(instance, result, duration),
        )
        _echo_json(
            {
                "imported": result.rows_imported,
                "records_in_feature_store": result.total_records,
                **result.details,
            }
        )
        shown, total = store.list_records(LIST_LIMIT)
    for record_id, text in shown:
        _echo_json({"id": record_id, "text": text})
    if total > len(shown):
        click.echo(f"... and {total - len(shown)} more ({total} records in all)")


def record_id_argument(value: str) -> int:
    """A record id from the command line, or ``InvalidRecordIdError`` (one line, exit 1)."""
    from batchinfer_dagster import ledger

    record_id = ledger.record_id_of_text(value.strip())
    if record_id is None:
        raise InvalidRecordIdError(
            f"{value!r:.60} is not a record id: ids are whole numbers from 1 to "
            f"{ledger.MAX_RECORD_ID}"
        )
    return record_id


def parse_range(value: str) -> range:
    """``FIRST-LAST`` as a range of record ids, both ends in 1..2^63-1, first ≤ last."""
    first, separator, last = value.partition("-")
    if not separator:
        raise InvalidRecordIdError(f"{value!r:.60} is not a range like 1-10000")
    start, end = record_id_argument(first), record_id_argument(last)
    if start > end:
        raise InvalidRecordIdError(f"{value!r:.60} is not a range: the first id is after the last")
    return range(start, end + 1)


def parse_ids(values: Sequence[str]) -> list[int]:
    return [record_id_argument(value) for value in values]


def id_payloads(ids: Iterable[int]) -> Iterator[bytes]:
    """Request payloads, made one at a time: a range of ten billion ids costs no memory."""
    from batchinfer_dagster import ledger

    return (ledger.request_payload(i) for i in ids)


@dataclass
class PublishReport:
    """What a publish sent, kept bounded: the first few and the last message ids, and the count.

    ``record_ids`` are the ids the messages ask for, in publish order, when the command made the
    messages (``--ids``, ``--range``, ``predict``); None for a message published as given.
    """

    record_ids: Sequence[int] | None = None
    count: int = 0
    first_message_ids: list[str] = field(default_factory=list)
    last_message_id: str | None = None

    def add(self, message_ids: Sequence[str]) -> None:
        room = LIST_LIMIT + 1 - len(self.first_message_ids)
        self.first_message_ids += message_ids[:room]
        self.count += len(message_ids)
        if message_ids:
            self.last_message_id = message_ids[-1]

    def documents(self) -> list[dict[str, Any]]:
        """The lines ``publish`` prints: one per message up to ``LIST_LIMIT``, else a summary.

        Record ids and queue message ids are named apart: the queue numbers its messages on its
        own (the local queue counts every message ever published), so a message id is no record
        id.
        """
        ids = self.record_ids
        if self.count <= LIST_LIMIT:
            if ids is None:
                return [{"message_id": message_id} for message_id in self.first_message_ids]
            return [
                {"record_id": record_id, "message_id": message_id}
                for record_id, message_id in zip(ids, self.first_message_ids, strict=True)
            ]
        summary: dict[str, Any] = {"published": self.count}
        if ids is not None:
            summary |= {"first_record_id": ids[0], "last_record_id": ids[self.count - 1]}
        return [
            summary
            | {
                "first_message_id": self.first_message_ids[0],
                "last_message_id": self.last_message_id,
            }
        ]


def publish_payloads(
    resources: Resources,
    payloads: Iterable[bytes],
    total: int,
    record_ids: Sequence[int] | None = None,
) -> PublishReport:
    """Publish in chunks of ``PUBLISH_CHUNK``; a progress bar on stderr when there are several.

    ``payloads`` is consumed chunk by chunk, so memory stays bounded by one chunk whatever the
    number of messages. The bar only moves between chunks, so a publish of one chunk shows none.
    """
    from batchinfer_dagster.chunks import chunked

    report = PublishReport(record_ids=record_ids)
    bar_file = sys.stderr if total > PUBLISH_CHUNK else io.StringIO()
    with (
        resources.request_queue.open() as queue,
        click.progressbar(length=total, label="publishing", file=bar_file) as bar,
    ):
        for chunk in chunked(payloads, PUBLISH_CHUNK):
            report.add(queue.publish(chunk))
            bar.update(len(chunk))
    return report


def _report_published(report: PublishReport) -> None:
    for document in report.documents():
        _echo_json(document)


def message_argument(value: str) -> bytes:
    """A message given as an argument, as UTF-8 bytes; one line and exit 1 when it is not."""
    from batchinfer_dagster.records import InvalidRecordError

    try:
        return value.encode("utf-8")
    except UnicodeEncodeError as error:
        raise InvalidRecordError(
            f"the message is not valid UTF-8 (at character {error.start}); give it as UTF-8"
        ) from None


@cli.command("publish")
@click.argument("values", nargs=-1)
@click.option("--ids", "as_ids", is_flag=True, help="Treat the arguments as record ids.")
@click.option("--range", "id_range", help="Publish one request per id in FIRST-LAST.")
@click.pass_context
def publish(
    ctx: click.Context, values: tuple[str, ...], as_ids: bool, id_range: str | None
) -> None:
    """Publish prediction requests to the request queue.

    With one argument, publishes that message exactly as given, e.g. '{"id": "1"}', and prints
    the queue's message id. With --ids or --range, prints each record id with its message id,
    or for more than 20 a summary of both.

    \b
    Examples:
      batchinfer publish '{"id": "1"}'
      {"message_id": "1"}
      batchinfer publish --ids 1 2
      {"record_id": 1, "message_id": "2"}
      {"record_id": 2, "message_id": "3"}
      batchinfer publish --range 1-10000
      {"published": 10000, "first_record_id": 1, "last_record_id": 10000, ...}
    """
    _engine(ctx)
    if id_range is not None:
        if values or as_ids:
            raise click.UsageError("--range takes no other arguments")
        ids: Sequence[int] = parse_range(id_range)
        report = publish_payloads(_resources(ctx), id_payloads(ids), len(ids), ids)
    elif as_ids:
        if not values:
            raise click.UsageError("--ids needs at least one record id")
        ids = parse_ids(values)
        report = publish_payloads(_resources(ctx), id_payloads(ids), len(ids), ids)
    elif len(values) == 1:
        report = publish_payloads(_resources(ctx), [message_argument(values[0])], 1)
    else:
        raise click.UsageError("give one message, or --ids ID..., or --range FIRST-LAST")
    _report_published(report)


@cli.command("predict")
@click.argument("ids", nargs=-1)
@click.option(
    "--stale",
    is_flag=True,
    help="Ask for exactly the stale predictions (see `status`), each once, instead of ids.",
)
@click.pass_context
def predict(ctx: click.Context, ids: tuple[str, ...], stale: bool) -> None:
    """Ask for predictions of these records (publishes one request per id).

    Ids of records that do not exist are named on stderr and not requested (exit 1); the
    others are published all the same.

    With --stale, asks for the records whose current prediction is stale (its text changed
    since, or the labels, template, label descriptions or model did), through the same queue.
    Each stale prediction is asked for once: running it again before the new predictions land
    publishes nothing new.

    \b
    Examples:
      batchinfer predict 1 2 3
      batchinfer predict --stale
      {"stale_requested": 2, "already_requested": 0, "model_checked": true}
    """
    if stale == bool(ids):
        raise click.UsageError("give record ids, or --stale (not both)")
    engine = _engine(ctx)
    resources = _resources(ctx)
    if stale:
        _echo_json(publish_stale(engine, resources))
        return
    from batchinfer_dagster.queries import missing_records

    record_ids = parse_ids(ids)
    missing = missing_records(engine, record_ids)
    known = [record_id for record_id in record_ids if record_id not in missing]
    if known:
        payloads = id_payloads(known)
        _report_published(publish_payloads(resources, payloads, len(known), known))
    if missing:
        click.echo(missing_records_line(sorted(missing)) + "; not requested", err=True)
        ctx.exit(1)


def missing_records_line(record_ids: Sequence[int]) -> str:
    """One line naming records that do not exist (the first ``LIST_LIMIT``) and how to add one."""
    shown = ", ".join(str(record_id) for record_id in record_ids[:LIST_LIMIT])
    more = f" and {len(record_ids) - LIST_LIMIT} more" if len(record_ids) > LIST_LIMIT else ""
    noun = "record" if len(record_ids) == 1 else "records"
    verb = "does" if len(record_ids) == 1 else "do"
    return f"{noun} {shown}{more} {verb} not exist (add-data-point or load adds records)"


def current_deployment(resources: Resources) -> staleness.Deployment:
    """The settings' parameters and the model the server reports now (None when it cannot)."""
    from batchinfer_dagster.prediction import deployment_of

    model_server = resources.model_server
    with model_server.open() as client:
        served = client.served_model()
    return deployment_of(model_server.parameters(), served)


def publish_stale(engine: sa.Engine, resources: Resources) -> dict[str, Any]:
    """Publish one request per stale, not yet requested prediction; remember each after its
    publish (a crash in between publishes those again next time, never loses one)."""
    from batchinfer_dagster import db, staleness

    deployment = current_deployment(resources)
    requested = 0
    for page in staleness.iter_stale(engine, deployment, unrequested_only=True):
        ids = [item.record_id for item in page]
        publish_payloads(resources, id_payloads(ids), len(ids), ids)
        staleness.record_requested(engine, page, now=db.utcnow())
        requested += len(page)
    counts = staleness.stale_counts(engine, deployment)
    return {
        "stale_requested": requested,
        "already_requested": counts["stale"] - requested,
        "model_checked": deployment.model is not None,
    }


@cli.command("lineage")
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
    engine = _engine(ctx)
    document = record_lineage(engine, record_id, current_deployment(_resources(ctx)))
    if document is None:
        click.echo(f"no record {record_id} and no prediction of it", err=True)
        ctx.exit(1)
    _echo_json(document)


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


@cli.command("prediction")
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
    engine = _engine(ctx)
    stored = prediction_of(engine, record_id, model)
    if stored is None:
        if missing_records(engine, [record_id]):
            click.echo(missing_records_line([record_id]), err=True)
        else:
            click.echo(f"no prediction for record {record_id} yet", err=True)
        ctx.exit(1)
    _echo_json(prediction_document(stored))


@cli.command("export")
@click.argument("file", type=click.Path(path_type=Path))
@click.option(
    "--since",
    help="Only predictions stored at or after this ISO 8601 time (UTC unless it names a zone).",
)
@click.pass_context
def export(ctx: click.Context, file: Path, since: str | None) -> None:
    """Write the stored predictions to a CSV, JSONL or Parquet file (by its extension).

    One row per record and model: record_id, model, label and score (the top one), labels and
    scores (ranked), predicted_at. Streamed in chunks, so any number of rows fits in memory;
    the file appears only once complete.

    \b
    Examples:
      batchinfer export predictions.parquet
      {"exported": 10000, "file": "predictions.parquet"}
      batchinfer export --since 2026-12-05T09:00:00Z today.csv
    """
    from batchinfer_dagster.export import export_format, export_predictions, parse_since

    export_format(file)
    moment = parse_since(since) if since is not None else None
    count = export_predictions(_engine(ctx), file, moment)
    _echo_json({"exported": count, "file": str(file)})


def status_counts(settings: Settings) -> dict[str, Any]:
    """Counts of everything the system holds, for ``batchinfer status`` and tests."""
    from batchinfer_dagster import ledger, staleness
    from batchinfer_dagster.defs.deployments import resources_for
    from batchinfer_dagster.queries import table_counts

    resources = resources_for(settings)
    tables = table_counts(resources.database.get_engine(), local_queue=settings.queue == "local")
    counts: dict[str, Any] = {
        "records": tables.records,
        "requests": tables.requests,
        "batches": tables.batches,
        "predictions": tables.predictions,
        # Open dead letters: those whose record has no prediction since.
        "dead_letters": tables.dead_letters_open,
        "dead_letters_resolved": tables.dead_letters_resolved,
    }
    if tables.queue_unacked is not None:
        counts["queue_unacked"] = tables.queue_unacked
    shown, _ = ledger.waiting_requests(
        resources.database.get_engine(),
        feature_wait=timedelta(seconds=settings.feature_wait_seconds),
        limit=WAITING_SHOWN,
    )
    deployment = current_deployment(resources)
    counts["stale_predictions"] = {
        **staleness.stale_counts(resources.database.get_engine(), deployment),
        # False: the model server did not say which model it serves; "model" is not counted.
        "model_checked": deployment.model is not None,
    }
    # The requests by status count them all; these are the ones nearest their deadline.
    counts["waiting_for_features"] = [waiting.document() for waiting in shown]
    with resources.feature_store.open() as store:
        counts["features"] = store.list_records(0)[1]
    return counts


def candidate_parameters(
    parameters: PredictParameters, labels: str | None, descriptions_file: Path | None
) -> PredictParameters:
    """The deployment's parameters with the --labels and --label-descriptions to try instead."""
    from batchinfer_protocol.zero_shot import (
        ParameterError,
        check_label_descriptions,
        check_labels,
    )

    try:
        if labels is not None:
            chosen = [label.strip() for label in labels.split(",") if label.strip()]
            parameters = dataclasses.replace(parameters, candidate_labels=check_labels(chosen))
        if descriptions_file is not None:
            raw = json.loads(descriptions_file.read_text(encoding="utf-8"))
            parameters = dataclasses.replace(
                parameters, label_descriptions=check_label_descriptions(raw)
            )
    except (ParameterError, OSError, ValueError) as error:
        raise click.BadParameter(str(error)) from error
    return parameters


CANDIDATE_OPTIONS = [
    click.option("--labels", help="Candidate labels instead of BATCHINFER_LABELS: 'a,b,c'."),
    click.option(
        "--label-descriptions",
        "descriptions_file",
        type=click.Path(path_type=Path),
        help="A JSON {label: [description, ...]} file instead of the deployment's.",
    ),
]


def candidate_options(command: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed(CANDIDATE_OPTIONS):
        command = option(command)
    return command


# Texts per predict call of `evaluate`: the progress bar moves every chunk; the client splits
# each call into its own request chunks (chunk_size) and sends them concurrently.
EVALUATE_CHUNK = 1024


@cli.command("evaluate")
@click.argument("file", type=click.Path(path_type=Path))
@candidate_options
@click.pass_context
def evaluate_command(
    ctx: click.Context, file: Path, labels: str | None, descriptions_file: Path | None
) -> None:
    """Measure accuracy on your own labelled texts, through the model server.

    FILE is a CSV (columns text, label) or JSONL (fields text, label). Prints accuracy,
    precision and recall per label, and the confusion matrix {true: {predicted: count}}, for
    the deployment's labels and descriptions, or for --labels / --label-descriptions to try
    before switching. Nothing is stored.

    \b
    Example:
      batchinfer evaluate labelled.csv
      {"examples": 200, "accuracy": 0.87, "per_label": {"billing": {"precision": 0.9, ...}},
       "confusion": {"billing": {"billing": 45, "account access": 5}, ...}, ...}
    """
    from batchinfer_dagster.chunks import chunked
    from batchinfer_dagster.clients.model_client import ModelError, RefusedText
    from batchinfer_dagster.evaluation import evaluate, read_labelled
    from batchinfer_dagster.prediction import configuration_of
    from batchinfer_dagster.receipts import UNKNOWN, ModelIdentity

    examples = read_labelled(file)
    model_server = _resources(ctx).model_server
    parameters = candidate_parameters(model_server.parameters(), labels, descriptions_file)
    pairs: list[tuple[str, str]] = []
    refused: list[dict[str, str]] = []
    identity = ModelIdentity("")
    try:
        with (
            model_server.open() as client,
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
    except ModelError as error:
        raise click.ClickException(
            f"the model server did not classify the texts: {error}"
        ) from error
    figures = evaluate(pairs, parameters.candidate_labels)
    _echo_json(
        {
            **figures.as_json(),
            "labels_not_candidates": list(figures.labels[len(parameters.candidate_labels) :]),
            "refused": refused,
            "model": identity.name,
            "model_digest": identity.weights_digest,
            "configuration": configuration_of(parameters, identity).digest,
        }
    )


@cli.command("status")
@click.pass_context
def status(ctx: click.Context) -> None:
    """Print counts of records, features, requests by status, predictions and dead letters,
    whether the model server is ready ("model_server": ready, loading, warming_up, failed or
    unreachable), and under "using" where they are kept (as `batchinfer where`).

    \b
    Example:
      batchinfer status
      {"records": 2, "requests": {"done": 1}, "predictions": 1, "dead_letters": 0, ...,
       "using": {"database": "sqlite:///...", "queue": "local (...)", ...}}
    """
    _engine(ctx)
    settings = _settings(ctx)
    _echo_json(
        {
            **status_counts(settings),
            "model_server": model_server_state(settings.model_url),
            "using": settings.state_locations(),
        }
    )


def model_server_state(model_url: str) -> str:
    """``ready``, ``loading``, ``warming_up`` (predictions wait for it), ``failed`` or
    ``unreachable``, as the model server's ``/health`` says; a Vertex endpoint is not probed."""
    if model_url.startswith("vertex://"):
        return "not probed (a Vertex AI endpoint)"
    import httpx

    from batchinfer_dagster.clients.model_client import HEALTH_ROUTE, read_health

    with httpx.Client() as client:
        return read_health(client, model_url.rstrip("/") + HEALTH_ROUTE)


@cli.group("rollout")
def rollout_group() -> None:
    """Try a candidate configuration beside the current predictions, compare, then promote."""


@rollout_group.command("start")
@candidate_options
@click.option("--sample", type=click.IntRange(min=1), help="Only the first N predicted records.")
@click.pass_context
def rollout_start(
    ctx: click.Context, labels: str | None, descriptions_file: Path | None, sample: int | None
) -> None:
    """Predict the records that have a current prediction again under a candidate configuration
    (other --labels or --label-descriptions), beside the current predictions, never current.

    Writes ledger batches that the sensor runs as ordinary `predictions` partitions (visible in
    the UI, retried and resumed like any batch); the `rollout_report` asset reports when they
    are done. Prints the candidate's configuration digest for `rollout report|promote|discard`.
    Running it again requests only the records with neither a candidate prediction nor an open
    request.

    \b
    Example:
      batchinfer rollout start --label-descriptions new-descriptions.json --sample 500
      {"candidate": "5d8f...", "requested": 500, "skipped": 0, "batches": 8}
    """
    from batchinfer_dagster import db, rollout
    from batchinfer_dagster.prediction import configuration_of
    from batchinfer_dagster.receipts import UNKNOWN, ModelIdentity

    model_server = _resources(ctx).model_server
    parameters = candidate_parameters(model_server.parameters(), labels, descriptions_file)
    with model_server.open() as client:
        served = client.served_model()
    if served is None:
        raise click.ClickException(
            "the model server does not report its model (a Vertex AI endpoint?): a rollout "
            "names its candidate by the model and its weights digest before predicting"
        )
    identity = ModelIdentity(served.model, served.model_digest or UNKNOWN)
    engine = _engine(ctx)
    try:
        started = rollout.start(
            engine,
            configuration_of(parameters, identity),
            rollout.current_records(engine, sample=sample),
            batch_size=_settings(ctx).batch_size,
            now=db.utcnow(),
        )
    except rollout.RolloutStateError as error:
        raise click.ClickException(str(error)) from error
    _echo_json(started.as_json())


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
        _echo_json(rollout.summary(_engine(ctx), candidate))
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
        promoted = rollout.promote(_engine(ctx), candidate)
    except rollout.RolloutStateError as error:
        raise click.ClickException(str(error)) from error
    _echo_json({"candidate": candidate, "promoted": promoted})


@rollout_group.command("discard")
@click.argument("candidate")
@click.pass_context
def rollout_discard(ctx: click.Context, candidate: str) -> None:
    """Abort a rollout: its batches still to run write nothing, and its candidate predictions
    (those not current) are deleted."""
    from batchinfer_dagster import rollout

    _echo_json({"candidate": candidate, "discarded": rollout.discard(_engine(ctx), candidate)})


@cli.command("where")
@click.argument("key", required=False, type=click.Choice(list(STATE_KEYS)))
@click.pass_context
def where(ctx: click.Context, key: str | None) -> None:
    """Print where the commands keep their state: database, queue, feature store, Dagster home.

    Resolved once from the settings, the same from any directory. With KEY, prints that value
    alone (for scripts: `make run` finds its Dagster home this way).

    \b
    Examples:
      batchinfer where
      {"home": "/home/me/.local/share/batchinfer", "database": "sqlite:///...", ...}
      batchinfer where dagster_home
    """
    locations = _settings(ctx).state_locations()
    if key is not None:
        click.echo(locations[key])
    else:
        _echo_json(locations)


@cli.group("dead-letters", invoke_without_command=True)
@click.option("--limit", type=click.IntRange(min=1), default=1000, show_default=True)
@click.option("--all", "include_resolved", is_flag=True, help="Include resolved dead letters.")
@click.pass_context
def dead_letters(ctx: click.Context, limit: int, include_resolved: bool) -> None:
    """Print open dead letters as JSON lines (oldest first): payload, reason, source, record;
    then the requests that may still become one, waiting for their record's features.

    A dead letter is open until its record is predicted (then resolved, with the run that did
    it). `batchinfer dead-letters replay` asks for their records again. A waiting request is
    looked up again at "next_lookup_at" (at once after an import) and becomes a dead letter at
    "dead_letter_at" if its record is still missing (BATCHINFER_FEATURE_WAIT_SECONDS).

    \b
    Example:
      batchinfer dead-letters
      {"id": 1, "payload": "not json", "reason": "not JSON: ...", "source": "sensor", ...}
      {"waiting": {"record_id": 99999, "reason": "record not in the feature store yet",
                   "next_lookup_at": "...", "dead_letter_at": "...", ...}}
    """
    if ctx.invoked_subcommand is not None:
        return
    from batchinfer_dagster import ledger, queries

    engine = _engine(ctx)
    for letter in queries.dead_letters(engine, limit=limit, include_resolved=include_resolved):
        _echo_json(letter.document())
    feature_wait = timedelta(seconds=_settings(ctx).feature_wait_seconds)
    waiting, _ = ledger.waiting_requests(engine, feature_wait=feature_wait, limit=limit)
    for request in waiting:
        _echo_json({"waiting": request.document()})


@dead_letters.command("replay")
@click.option("--reason", help="Only dead letters whose reason contains this text.")
@click.option("--id", "ids", multiple=True, help="Only this dead letter id (repeatable).")
@click.pass_context
def dead_letters_replay(ctx: click.Context, reason: str | None, ids: tuple[str, ...]) -> None:
    """Publish the request of each open dead letter again (all, by --reason, or by --id).

    Each dead letter is replayed once: running the command again publishes nothing new for it.
    Malformed messages name no record and are not replayed.

    \b
    Examples:
      batchinfer dead-letters replay --reason "unknown record id"
      batchinfer dead-letters replay --id 12 --id 13
    """
    from batchinfer_dagster import db, ledger

    which = ledger.DeadLetterFilter(reason=reason, ids=parse_ids(ids) if ids else None)
    engine = _engine(ctx)
    with _resources(ctx).request_queue.open() as queue:
        report = ledger.replay_dead_letters(engine, queue.publish, which, now=db.utcnow())
    _echo_json(
        {
            "replayed": report.replayed,
            "already_replayed": report.already_replayed,
            "not_replayable": report.not_replayable,
        }
    )


@cli.group("db")
def db_group() -> None:
    """Manage the app database schema."""


@db_group.command("upgrade")
@click.pass_context
def db_upgrade(ctx: click.Context) -> None:
    """Run the database migrations up to the newest schema.

    The one step that changes the schema: `make run`, `make demo` and the deploy run call it,
    and the CLI does on its first use of the embedded SQLite database. Sensor ticks and runs
    only check the schema revision and fail with a message naming this command.

    \b
    Example:
      BATCHINFER_DATABASE_URL=postgresql+psycopg://user:pw@host/db batchinfer db upgrade
    """
    import sqlalchemy as sa

    from batchinfer_dagster import db

    database = _resources(ctx).database
    database.upgrade()
    where = sa.make_url(database.url()).render_as_string(hide_password=True)
    click.echo(f"database {where} is at the newest schema ({db.head_revision()})")


@cli.group("pubsub")
def pubsub_group() -> None:
    """Manage the Pub/Sub topology (emulator or a real project)."""


@pubsub_group.command("create")
@click.pass_context
def pubsub_create(ctx: click.Context) -> None:
    """Create topic, subscription and dead-letter topic if missing (idempotent).

    \b
    Example:
      PUBSUB_EMULATOR_HOST=127.0.0.1:8085 batchinfer pubsub create
    """
    from batchinfer_dagster.clients.pubsub_queue import create_topology
    from batchinfer_dagster.defs.deployments import pubsub_queue_for

    _echo_json(create_topology(pubsub_queue_for(_settings(ctx)).topology()))


@cli.command("serve-model")
def serve_model() -> None:
    """Start the model server (settings from AIP_* and MODEL_* variables).

    \b
    Example:
      AIP_HTTP_PORT=8080 MODEL_BACKEND=embedding batchinfer serve-model
    """
    # The model server is its own distribution (batchinfer-model-server): run it as a program,
    # so the Dagster side never imports torch.
    try:
        os.execvp(sys.executable, [sys.executable, "-m", "model_server"])
    except OSError as error:
        raise click.ClickException(f"cannot start the model server: {error}") from error


@cli.command("deploy-model")
@click.option("--project", required=True, help="Google Cloud project id.")
@click.option("--region", required=True, help="Vertex AI region, e.g. us-central1.")
@click.option("--image", "image_uri", required=True, help="Model-server image URI.")
@click.option("--endpoint-id", help="Deploy to this existing endpoint (default: a new one).")
@click.option("--machine-type", default="g2-standard-8", show_default=True)
@click.option("--accelerator-type", default="NVIDIA_L4", show_default=True, help="'' for CPU.")
@click.option("--accelerator-count", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--min-replicas", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--max-replicas", type=click.IntRange(min=1), default=2, show_default=True)
@click.option("--model-backend", type=click.Choice(["nli", "embedding"]), default="nli")
@click.option("--model", "model_name_or_path", default="facebook/bart-large-mnli")
@click.option("--artifact-uri", help="gs:// folder with the model (AIP_STORAGE_URI).")
@click.option("--service-account", help="Identity the serving container runs as.")
def deploy_model_command(**options: Any) -> None:
    """Upload the model-server image as a Vertex AI Model and deploy it to an endpoint.

    Prints the BATCHINFER_MODEL_URL to use. Takes 10-20 minutes on a GPU.

    \b
    Example:
      batchinfer deploy-model --project my-project --region us-central1 \\
        --image us-central1-docker.pkg.dev/my-project/batchinfer/model-server:v1
    """
    try:
        from model_server.vertex_deploy import deploy_model
    except ModuleNotFoundError as error:
        raise click.ClickException(
            f"deploy-model needs the model server's Vertex extra ({error}): "
            "pip install './model-server[vertex]'"
        ) from error

    options["accelerator_type"] = options["accelerator_type"] or None
    options["min_replica_count"] = options.pop("min_replicas")
    options["max_replica_count"] = options.pop("max_replicas")
    try:
        deployed = deploy_model(**options)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc
    _echo_json(
        {"model": deployed.model, "endpoint": deployed.endpoint, "model_url": deployed.model_url}
    )


main: Callable[[], Any] = cli
