"""Records (``data_points``): adding one, bulk loading CSV, JSONL or Parquet files, reading back."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pandas as pd
import sqlalchemy as sa
from sqlalchemy import Engine

from batchinfer_dagster import db
from batchinfer_dagster.chunks import chunked

# Rows per read and per insert: bounded memory for files of any size.
LOAD_CHUNK = 5000


class InvalidRecordError(ValueError):
    """A record the user gave cannot be stored (empty text, unreadable file line)."""


def check_text(text: str, where: str = "text") -> str:
    if not text or not text.strip():
        raise InvalidRecordError(f"{where} is empty: a data point needs some text")
    return text


def add_records(engine: Engine, texts: Sequence[str]) -> list[int]:
    """Insert texts; their ids come from the database's identity, in the order given."""
    for i, text in enumerate(texts):
        check_text(text, f"text #{i + 1}")
    if not texts:
        return []
    now = db.utcnow()
    table = db.data_points
    with engine.begin() as connection:
        result = connection.execute(
            table.insert().returning(table.c.id, sort_by_parameter_order=True),
            [{"text": text, "created_at": now} for text in texts],
        )
        return list(result.scalars())


def read_texts(path: Path) -> Iterator[str]:
    """Texts of a CSV (``text`` column), JSONL (``text`` field) or Parquet (``text`` column) file.

    pandas reads the files in chunks of ``LOAD_CHUNK`` rows; each text is checked, and an error
    names the file and the line (CSV: the record's line counting the header; JSONL: the line).
    """
    if not path.is_file():
        raise InvalidRecordError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        yield from _read_csv(path)
    elif suffix in {".jsonl", ".ndjson", ".json"}:
        yield from _read_jsonl(path)
    elif suffix == ".parquet":
        yield from _read_parquet(path)
    else:
        raise InvalidRecordError(f"{path}: unknown format {suffix!r}; use .csv, .jsonl or .parquet")


def _checked(texts: pd.Series, where: Callable[[int], str]) -> Iterator[str]:
    for position, text in enumerate(texts):
        if not isinstance(text, str):
            raise InvalidRecordError(f"{where(position)}: 'text' is {text!r}, not a string")
        yield check_text(text, where(position))


def _read_csv(path: Path) -> Iterator[str]:
    try:
        columns = pd.read_csv(path, nrows=0).columns
    except pd.errors.EmptyDataError:
        columns = pd.Index([])
    if "text" not in columns:
        raise InvalidRecordError(f"{path}: no 'text' column (columns: {list(columns)})")
    line = 2
    chunks = pd.read_csv(
        path, usecols=["text"], dtype=str, keep_default_na=False, chunksize=LOAD_CHUNK
    )
    for chunk in chunks:
        start = line
        yield from _checked(chunk["text"], lambda i, start=start: f"{path}:{start + i}")
        line += len(chunk)


def _jsonl_error(path: Path) -> InvalidRecordError:
    """The first line pandas could not read, found again with ``json`` to name it."""
    with path.open(encoding="utf-8") as handle:
        for line, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            try:
                item = json.loads(raw)
            except json.JSONDecodeError as exc:
                return InvalidRecordError(f"{path}:{line}: not JSON ({exc.msg})")
            if not isinstance(item, dict):
                return InvalidRecordError(f"{path}:{line}: needs a string field 'text'")
    return InvalidRecordError(f"{path}: not JSON lines")


def _read_jsonl(path: Path) -> Iterator[str]:
    # Blank lines are skipped by pandas; map row positions back to file lines for errors.
    with path.open(encoding="utf-8") as handle:
        lines = [number for number, raw in enumerate(handle, start=1) if raw.strip()]
    if not lines:
        return
    try:
        reader = pd.read_json(path, lines=True, dtype=False, chunksize=LOAD_CHUNK)
        row = 0
        for chunk in reader:
            if "text" not in chunk.columns:
                raise InvalidRecordError(f"{path}:{lines[row]}: needs a string field 'text'")
            start = row
            yield from _checked(chunk["text"], lambda i, start=start: f"{path}:{lines[start + i]}")
            row += len(chunk)
    except ValueError as exc:
        if isinstance(exc, InvalidRecordError):
            raise
        raise _jsonl_error(path) from exc


def _read_parquet(path: Path) -> Iterator[str]:
    try:
        frame = pd.read_parquet(path, columns=["text"])
    except (KeyError, ValueError) as exc:
        raise InvalidRecordError(f"{path}: no 'text' column ({exc})") from exc
    yield from _checked(frame["text"], lambda i: f"{path}: row {i + 1}")


def count_texts(path: Path) -> int:
    """Check the whole file before anything is written, so a bad line loads nothing."""
    return sum(1 for _ in read_texts(path))


def load_file(
    engine: Engine, path: Path, on_chunk: Callable[[int], None] | None = None
) -> list[int]:
    """Bulk-load a file in chunks; returns the first and last id of what was loaded."""
    first: int | None = None
    last = 0
    for chunk in chunked(read_texts(path), LOAD_CHUNK):
        ids = add_records(engine, chunk)
        first = ids[0] if first is None else first
        last = ids[-1]
        if on_chunk is not None:
            on_chunk(len(chunk))
    return [] if first is None else [first, last]


def get_text(engine: Engine, record_id: int) -> str | None:
    with engine.connect() as connection:
        return connection.execute(
            sa.select(db.data_points.c.text).where(db.data_points.c.id == record_id)
        ).scalar_one_or_none()
