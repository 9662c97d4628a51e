"""Parse a command line with the real click interface of the program it names, without running it.

Used where the repository writes command lines for someone else to run (compose.yaml, the
README's walkthrough): an unknown command or option, a bad value or a missing argument is
click's ``UsageError`` here, as it would be there.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points

import click


def click_command(program: str) -> click.Command:
    """The click command behind a console script (the function wrapping it, unwrapped)."""
    (entry_point,) = entry_points(group="console_scripts", name=program)
    loaded = entry_point.load()
    if isinstance(loaded, click.Command):
        return loaded
    return importlib.import_module(entry_point.module).cli


def parse_command_line(argv: list[str]) -> click.Context:
    """Parse ``argv`` with its program's own click interface, down to the leaf command.

    Raises click's ``UsageError`` (an unknown command or option, a bad value, a missing
    argument) exactly as running it would, without running it.
    """
    program, *args = argv
    command = click_command(program)
    context = command.make_context(program, args)
    while isinstance(command, click.Group):
        # What a group leaves for its subcommand: the subcommand's name, then its arguments.
        rest = [*context._protected_args, *context.args]  # noqa: SLF001
        name, command, rest = command.resolve_command(context, rest)
        context = command.make_context(name, rest, parent=context)
    return context
