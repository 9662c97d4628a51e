"""The ``batchinfer`` command: add, load, import, publish, inspect — and the operator's tools.

Every command reads the one ``Settings`` object and builds its clients from it as the code
location does: the everyday commands (``status``, ``publish``, ``predict``, ``prediction``,
``dead-letters``) through ``batchinfer_dagster.connections``, without Dagster, the others through
the resources of ``batchinfer_dagster.defs.deployments``; so the same commands drive the
embedded defaults and production. Failures a user can cause or fix (bad input, a server that is
down, a schema to migrate) end as one line on stderr and a non-zero exit, never as a traceback.

One module per command group, arguments and printing only; the SQL they read through lives in
``batchinfer_dagster.queries`` and the domain modules. Each module lists its commands in
``COMMANDS``, which this root group adds. Only ``click`` and the settings are imported up front:
each command imports what it needs (SQLAlchemy, the ledger, Dagster's resources, pandas), so
``--version``, ``--help`` and ``where`` never pay for Dagster or pandas, and the everyday
commands pay for neither (``tests/fast/test_cli_package.py`` runs them with both refused).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from types import ModuleType
from typing import Any

import click

from batchinfer_dagster.cli import (
    infrastructure,
    predictions,
    records,
    requests,
    rollout,
    serve,
    status,
)
from batchinfer_dagster.cli.arguments import InvalidRecordIdError
from batchinfer_dagster.settings import load_settings

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


# The command modules; each lists its commands in COMMANDS. `--help` sorts them by name.
GROUP_MODULES: tuple[ModuleType, ...] = (
    records,
    requests,
    predictions,
    rollout,
    status,
    infrastructure,
    serve,
)
for _module in GROUP_MODULES:
    for _command in _module.COMMANDS:
        cli.add_command(_command)

main: Callable[[], Any] = cli
