"""``status`` (counts of everything, the model server's health) and ``where``
(where the commands keep their state).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import click

from batchinfer_dagster.cli.context import current_deployment, engine_of, settings_of
from batchinfer_dagster.cli.output import echo_json
from batchinfer_dagster.connections import Connections
from batchinfer_dagster.settings import Settings

WAITING_SHOWN = 5
STATE_KEYS = ("home", "dagster_home", "database", "queue", "feature_store", "model_url")


def status_counts(settings: Settings) -> dict[str, Any]:
    """Counts of everything the system holds, for ``batchinfer status`` and tests."""
    from batchinfer_dagster import ledger, staleness
    from batchinfer_dagster.queries import table_counts

    connections = Connections(settings)
    engine = connections.engine()
    tables = table_counts(engine, local_queue=settings.queue == "local")
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
        engine,
        feature_wait=timedelta(seconds=settings.feature_wait_seconds),
        limit=WAITING_SHOWN,
    )
    deployment = current_deployment(connections)
    counts["stale_predictions"] = {
        **staleness.stale_counts(engine, deployment),
        # False: the model server did not say which model it serves; "model" is not counted.
        "model_checked": deployment.model is not None,
    }
    # The requests by status count them all; these are the ones nearest their deadline.
    counts["waiting_for_features"] = [waiting.document() for waiting in shown]
    with connections.feature_store() as store:
        counts["features"] = store.list_records(0)[1]
    return counts


@click.command("status")
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
    engine_of(ctx)
    settings = settings_of(ctx)
    echo_json(
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


@click.command("where")
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
    locations = settings_of(ctx).state_locations()
    if key is not None:
        click.echo(locations[key])
    else:
        echo_json(locations)


COMMANDS: tuple[click.Command, ...] = (status, where)
