"""Command-line values turned into typed ones: record ids and ranges, a message,
and the candidate configuration options shared by ``evaluate`` and ``rollout start``.

Bad values raise ``InvalidRecordIdError`` (or click's ``BadParameter``), which the root group
prints as one line with exit status 1.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from batchinfer_protocol.zero_shot import PredictParameters


class InvalidRecordIdError(ValueError):
    """A record id given on the command line that is not one of 1..2^63-1."""


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


def message_argument(value: str) -> bytes:
    """A message given as an argument, as UTF-8 bytes; one line and exit 1 when it is not."""
    from batchinfer_dagster.records import InvalidRecordError

    try:
        return value.encode("utf-8")
    except UnicodeEncodeError as error:
        raise InvalidRecordError(
            f"the message is not valid UTF-8 (at character {error.start}); give it as UTF-8"
        ) from None


def candidate_parameters(
    parameters: PredictParameters, labels: str | None, descriptions_file: Path | None
) -> PredictParameters:
    """The deployment's parameters with the --labels and --label-descriptions to try instead."""
    from batchinfer_protocol.zero_shot import ParameterError, check_label_descriptions, check_labels

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
