"""How the commands print: one JSON document per line on stdout, lists cut at ``LIST_LIMIT``."""

from __future__ import annotations

import json
from collections.abc import Sequence

import click

# Items a command lists one by one before it prints a summary instead.
LIST_LIMIT = 20


def echo_json(value: object) -> None:
    """``value`` as one line of JSON, non-ASCII text kept as it is."""
    click.echo(json.dumps(value, ensure_ascii=False))


def missing_records_line(record_ids: Sequence[int]) -> str:
    """One line naming records that do not exist (the first ``LIST_LIMIT``) and how to add one."""
    shown = ", ".join(str(record_id) for record_id in record_ids[:LIST_LIMIT])
    more = f" and {len(record_ids) - LIST_LIMIT} more" if len(record_ids) > LIST_LIMIT else ""
    noun = "record" if len(record_ids) == 1 else "records"
    verb = "does" if len(record_ids) == 1 else "do"
    return f"{noun} {shown}{more} {verb} not exist (add-data-point or load adds records)"
