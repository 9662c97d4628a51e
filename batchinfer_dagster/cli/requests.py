"""The commands that ask for predictions: ``publish``, ``predict`` (by id or
``--stale``), and ``dead-letters`` with ``replay``, the requests that could not be served.
"""

from __future__ import annotations

import io
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import click

from batchinfer_dagster.cli.arguments import message_argument, parse_ids, parse_range
from batchinfer_dagster.cli.context import (
    connections_of,
    current_deployment,
    engine_of,
    settings_of,
)
from batchinfer_dagster.cli.output import LIST_LIMIT, echo_json, missing_records_line

if TYPE_CHECKING:
    import sqlalchemy as sa

    from batchinfer_dagster.connections import Connections


# Messages per publish call: a progress bar that moves, and bounded memory per call.
PUBLISH_CHUNK = 1000


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
    connections: Connections,
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
        connections.request_queue() as queue,
        click.progressbar(length=total, label="publishing", file=bar_file) as bar,
    ):
        for chunk in chunked(payloads, PUBLISH_CHUNK):
            report.add(queue.publish(chunk))
            bar.update(len(chunk))
    return report


def report_published(report: PublishReport) -> None:
    for document in report.documents():
        echo_json(document)


@click.command("publish")
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
    engine_of(ctx)
    if id_range is not None:
        if values or as_ids:
            raise click.UsageError("--range takes no other arguments")
        ids: Sequence[int] = parse_range(id_range)
        report = publish_payloads(connections_of(ctx), id_payloads(ids), len(ids), ids)
    elif as_ids:
        if not values:
            raise click.UsageError("--ids needs at least one record id")
        ids = parse_ids(values)
        report = publish_payloads(connections_of(ctx), id_payloads(ids), len(ids), ids)
    elif len(values) == 1:
        report = publish_payloads(connections_of(ctx), [message_argument(values[0])], 1)
    else:
        raise click.UsageError("give one message, or --ids ID..., or --range FIRST-LAST")
    report_published(report)


@click.command("predict")
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
    engine = engine_of(ctx)
    connections = connections_of(ctx)
    if stale:
        echo_json(publish_stale(engine, connections))
        return
    from batchinfer_dagster.queries import missing_records

    record_ids = parse_ids(ids)
    missing = missing_records(engine, record_ids)
    known = [record_id for record_id in record_ids if record_id not in missing]
    if known:
        payloads = id_payloads(known)
        report_published(publish_payloads(connections, payloads, len(known), known))
    if missing:
        click.echo(missing_records_line(sorted(missing)) + "; not requested", err=True)
        ctx.exit(1)


def publish_stale(engine: sa.Engine, connections: Connections) -> dict[str, Any]:
    """Publish one request per stale, not yet requested prediction; remember each after its
    publish (a crash in between publishes those again next time, never loses one)."""
    from batchinfer_dagster import db, staleness

    deployment = current_deployment(connections)
    requested = 0
    for page in staleness.iter_stale(engine, deployment, unrequested_only=True):
        ids = [item.record_id for item in page]
        publish_payloads(connections, id_payloads(ids), len(ids), ids)
        staleness.record_requested(engine, page, now=db.utcnow())
        requested += len(page)
    counts = staleness.stale_counts(engine, deployment)
    return {
        "stale_requested": requested,
        "already_requested": counts["stale"] - requested,
        "model_checked": deployment.model is not None,
    }


@click.group("dead-letters", invoke_without_command=True)
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

    engine = engine_of(ctx)
    for letter in queries.dead_letters(engine, limit=limit, include_resolved=include_resolved):
        echo_json(letter.document())
    feature_wait = timedelta(seconds=settings_of(ctx).feature_wait_seconds)
    waiting, _ = ledger.waiting_requests(engine, feature_wait=feature_wait, limit=limit)
    for request in waiting:
        echo_json({"waiting": request.document()})


@dead_letters.command("replay")
@click.option("--reason", help="Only dead letters whose reason contains this text.")
@click.option("--id", "ids", multiple=True, help="Only this dead letter id (repeatable).")
@click.pass_context
def dead_letters_replay(ctx: click.Context, reason: str | None, ids: tuple[str, ...]) -> None:
    """Publish the request of each open dead letter again (all, by --reason, or by --id).

    Each dead letter is replayed once: running the command again publishes nothing new for it.
    Malformed messages name no record and are not replayed. A rollout's dead letter goes back
    into its rollout while it runs ("into_rollouts"); `rollout promote` makes it an ordinary
    one, published as any other, and `rollout discard` resolves it ("rollout_closed" counts
    those still charged to a closed rollout: 0 unless one was changed by hand).

    \b
    Examples:
      batchinfer dead-letters replay --reason "unknown record id"
      batchinfer dead-letters replay --id 12 --id 13
    """
    from batchinfer_dagster import db, ledger

    which = ledger.DeadLetterFilter(reason=reason, ids=parse_ids(ids) if ids else None)
    engine = engine_of(ctx)
    with connections_of(ctx).request_queue() as queue:
        report = ledger.replay_dead_letters(
            engine,
            queue.publish,
            which,
            now=db.utcnow(),
            rollout_batch_size=settings_of(ctx).batch_size,
        )
    echo_json(
        {
            "replayed": report.replayed,
            "already_replayed": report.already_replayed,
            "not_replayable": report.not_replayable,
            "into_rollouts": report.into_rollouts,
            "rollout_closed": report.rollout_closed,
        }
    )


COMMANDS: tuple[click.Command, ...] = (publish, predict, dead_letters)
