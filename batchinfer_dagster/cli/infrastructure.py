"""``db upgrade`` and ``pubsub create``: the schema and the Pub/Sub topology, set up
by the operator or the deploy run before anything else runs.
"""

from __future__ import annotations

import click

from batchinfer_dagster.cli.context import resources_of, settings_of
from batchinfer_dagster.cli.output import echo_json


@click.group("db")
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

    database = resources_of(ctx).database
    database.upgrade()
    where = sa.make_url(database.url()).render_as_string(hide_password=True)
    click.echo(f"database {where} is at the newest schema ({db.head_revision()})")


@click.group("pubsub")
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

    echo_json(create_topology(pubsub_queue_for(settings_of(ctx)).topology()))


COMMANDS: tuple[click.Command, ...] = (db_group, pubsub_group)
