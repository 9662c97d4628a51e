"""Records (``data_points``): adding one, bulk loading files, reading them back."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy import Engine

from batchinfer_dagster import db

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
    """Texts of a CSV (a ``text`` column) or JSONL (a ``text`` field) file, checked line by line."""
    if not path.is_file():
        raise InvalidRecordError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        yield from _read_csv(path)
    elif suffix in {".jsonl", ".ndjson", ".json"}:
        yield from _read_jsonl(path)
    else:
        raise InvalidRecordError(f"{path}: unknown format {suffix!r}; use .csv or .jsonl")


def _read_csv(path: Path) -> Iterator[str]:
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if not reader.fieldnames or "text" not in reader.fieldnames:
            raise InvalidRecordError(f"{path}: no 'text' column (columns: {reader.fieldnames})")
        for line, row in enumerate(reader, start=2):
            yield check_text(row["text"] or "", f"{path}:{line}")


def _read_jsonl(path: Path) -> Iterator[str]:
    with path.open(encoding="utf-8") as handle:
        for line, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            try:
                item = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise InvalidRecordError(f"{path}:{line}: not JSON ({exc.msg})") from exc
            if not isinstance(item, dict) or not isinstance(item.get("text"), str):
                raise InvalidRecordError(f"{path}:{line}: needs a string field 'text'")
            yield check_text(item["text"], f"{path}:{line}")


def count_texts(path: Path) -> int:
    """Check the whole file before anything is written, so a bad line loads nothing."""
    return sum(1 for _ in read_texts(path))


def load_file(
    engine: Engine, path: Path, on_chunk: Callable[[int], None] | None = None
) -> list[int]:
    """Bulk-load a file in chunks; returns the first and last id of what was loaded."""
    first_last: list[int] = []
    chunk: list[str] = []

    def flush() -> None:
        ids = add_records(engine, chunk)
        if not first_last:
            first_last.append(ids[0])
        first_last[1:] = [ids[-1]]
        if on_chunk is not None:
            on_chunk(len(chunk))
        chunk.clear()

    for text in read_texts(path):
        chunk.append(text)
        if len(chunk) >= LOAD_CHUNK:
            flush()
    if chunk:
        flush()
    return first_last


def get_text(engine: Engine, record_id: int) -> str | None:
    with engine.connect() as connection:
        return connection.execute(
            sa.select(db.data_points.c.text).where(db.data_points.c.id == record_id)
        ).scalar_one_or_none()
