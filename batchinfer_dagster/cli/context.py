"""What every command gets from the click context: the settings the root group loaded, the
clients and the app database built from them, and the Dagster instance to report to.

Everything past ``click`` and the settings is imported inside the functions, so a command that
needs no database (``where``, ``--version``) never imports SQLAlchemy, and one that needs no
Dagster object (``status``, ``publish``, ``predict``, ``prediction``) opens its clients through
``connections_of`` and never imports Dagster.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import click

from batchinfer_dagster.connections import Connections
from batchinfer_dagster.settings import Settings

if TYPE_CHECKING:
    import sqlalchemy as sa
    from dagster import DagsterInstance

    from batchinfer_dagster import staleness
    from batchinfer_dagster.defs.deployments import Resources


def settings_of(ctx: click.Context) -> Settings:
    """The ``Settings`` the root group loaded once for this invocation."""
    return ctx.find_root().obj


def connections_of(ctx: click.Context) -> Connections:
    """The deployment's clients, opened without Dagster."""
    return Connections(settings_of(ctx))


def resources_of(ctx: click.Context) -> Resources:
    """The resources the code location would build from the same settings (imports Dagster:
    for the commands that need a resource or the instance, else ``connections_of``)."""
    from batchinfer_dagster.defs.deployments import resources_for

    return resources_for(settings_of(ctx))


def engine_of(ctx: click.Context) -> sa.Engine:
    """The app database; the embedded SQLite one is migrated on first use.

    On a laptop the CLI is the first thing a user runs, so it creates its own database. Any
    other database is migrated only by ``batchinfer db upgrade`` (the deploy run does it).
    Built from the settings' URL, as ``DatabaseResource`` builds it, without Dagster's resources.
    """
    from batchinfer_dagster import db

    url = settings_of(ctx).resolved_database_url
    if db.is_sqlite(url):
        engine = db.create_app_engine(url)
        try:
            if db.current_revision(engine) != db.head_revision():
                db.upgrade(engine)
        finally:
            engine.dispose()
    return db.engine_for(url)


def record_in_dagster(ctx: click.Context, report: Callable[[DagsterInstance], object]) -> None:
    """Record an asset event in the Dagster instance of ``DAGSTER_HOME`` (``batchinfer where``).

    The data is already written when this runs, so a failure here does not fail the command: it
    is one line on stderr naming the instance, and the UI shows the event after the next
    observation or materialization.
    """
    from batchinfer_dagster.defs import asset_events

    home = settings_of(ctx).resolved_dagster_home
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


@contextmanager
def dagster_instance(ctx: click.Context) -> Iterator[DagsterInstance]:
    """The Dagster instance of ``DAGSTER_HOME`` for a run the command makes (``import-data``).

    An instance that cannot be opened does not stop the command: its run goes to a throwaway
    instance instead, with one line on stderr naming the home, and the UI shows the result
    after the next materialization there.
    """
    from dagster import DagsterInstance

    from batchinfer_dagster.defs import asset_events

    home = settings_of(ctx).resolved_dagster_home
    try:
        instance = asset_events.open_instance(home)
    except Exception as error:  # noqa: BLE001 - any failure of the instance is reported alike
        click.echo(
            f"warning: the Dagster instance in {home} cannot be opened "
            f"({type(error).__name__}: {' '.join(str(error).split())[:200]}); this run is not "
            "recorded there: materialize features in the UI to update it",
            err=True,
        )
        instance = DagsterInstance.ephemeral()
    with instance:
        yield instance


def current_deployment(connections: Connections) -> staleness.Deployment:
    """The settings' parameters and the model the server reports now (None when it cannot)."""
    from batchinfer_dagster.prediction import deployment_of

    with connections.model_client() as client:
        served = client.served_model()
    return deployment_of(connections.parameters(), served)
