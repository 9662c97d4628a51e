"""Predictions out of the app database into a file: CSV, JSONL or Parquet (``batchinfer export``).

By default one row per record: its current prediction, the one ``batchinfer prediction`` shows
(what a user exporting "the predictions" expects: one answer per record). With
``all_configurations`` every stored row: a record keeps one per configuration (model, labels,
template…), and ``current`` tells which one is its record's answer. Each row has the record,
its configuration and model, the top label and score and the full ranked lists. Rows are read
and written ``EXPORT_CHUNK`` at a time (a server-side cursor on PostgreSQL, ``yield_per`` on
SQLite), so memory stays at one chunk whatever the table holds; Parquet gets one row group per
chunk. The file appears only when complete: it is written beside its final name and renamed
at the end.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Engine

from batchinfer_dagster import db

EXPORT_CHUNK = 1000
FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".parquet": "parquet"}
# The columns of every format, in order; ``labels``/``scores`` are ranked, best first.
COLUMNS = (
    "record_id",
    "configuration",
    "current",
    "model",
    "label",
    "score",
    "labels",
    "scores",
    "predicted_at",
)
# Written as JSON in a CSV cell: the lists as arrays, ``current`` as true/false.
JSON_CELLS = ("labels", "scores", "current")


class ExportError(ValueError):
    """An export that cannot be written as asked (format, time), in one line."""


def export_format(path: Path) -> str:
    """The format named by ``path``'s extension, or ``ExportError``."""
    try:
        return FORMATS[path.suffix.lower()]
    except KeyError:
        raise ExportError(
            f"{path}: unknown format {path.suffix!r}; use .csv, .jsonl or .parquet"
        ) from None


def parse_since(value: str) -> datetime:
    """An ISO 8601 date or time; without a zone it is UTC."""
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ExportError(
            f"--since {value!r} is not an ISO 8601 time, e.g. 2026-12-05 or 2026-12-05T09:30:00Z"
        ) from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def prediction_chunks(
    engine: Engine, since: datetime | None = None, *, all_configurations: bool = False
) -> Iterator[list[dict]]:
    """Stored predictions as ``COLUMNS`` dicts, ``EXPORT_CHUNK`` at a time, by record and
    configuration (the primary key's order).

    ``since``: only those stored (predicted or predicted again) at or after it.
    ``all_configurations``: every row, not only each record's current one.
    """
    table = db.predictions
    query = sa.select(
        table.c.record_id,
        table.c.configuration,
        table.c.is_current,
        table.c.model,
        table.c.labels,
        table.c.scores,
        table.c.updated_at,
    ).order_by(table.c.record_id, table.c.configuration)
    if since is not None:
        query = query.where(table.c.updated_at >= since)
    if not all_configurations:
        query = query.where(table.c.is_current)
    with engine.connect() as connection:
        result = connection.execution_options(yield_per=EXPORT_CHUNK).execute(query)
        for rows in result.partitions():
            yield [_document(row) for row in rows]


def _document(row: sa.Row) -> dict[str, Any]:
    return {
        "record_id": row.record_id,
        "configuration": row.configuration,
        "current": bool(row.is_current),
        "model": row.model,
        "label": row.labels[0] if row.labels else None,
        "score": row.scores[0] if row.scores else None,
        "labels": list(row.labels),
        "scores": list(row.scores),
        "predicted_at": row.updated_at.astimezone(UTC).isoformat(),
    }


def export_predictions(
    engine: Engine,
    path: Path,
    since: datetime | None = None,
    *,
    all_configurations: bool = False,
) -> int:
    """Write the stored predictions (since ``since``; every configuration's or only the current
    ones, ``prediction_chunks``) to ``path``; returns how many."""
    kind = export_format(path)
    partial = path.with_name(path.name + ".partial")
    chunks = prediction_chunks(engine, since, all_configurations=all_configurations)
    try:
        count = {"csv": _write_csv, "jsonl": _write_jsonl, "parquet": _write_parquet}[kind](
            partial, chunks
        )
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)
    return count


def _write_csv(path: Path, chunks: Iterator[list[dict]]) -> int:
    count = 0
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        for chunk in chunks:
            for row in chunk:
                cells = {name: json.dumps(row[name], ensure_ascii=False) for name in JSON_CELLS}
                writer.writerow({**row, **cells})
            count += len(chunk)
    return count


def _write_jsonl(path: Path, chunks: Iterator[list[dict]]) -> int:
    count = 0
    with path.open("w", encoding="utf-8") as handle:
        for chunk in chunks:
            handle.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in chunk)
            count += len(chunk)
    return count


def _write_parquet(path: Path, chunks: Iterator[list[dict]]) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema(
        [
            ("record_id", pa.int64()),
            ("configuration", pa.string()),
            ("current", pa.bool_()),
            ("model", pa.string()),
            ("label", pa.string()),
            ("score", pa.float64()),
            ("labels", pa.list_(pa.string())),
            ("scores", pa.list_(pa.float64())),
            ("predicted_at", pa.timestamp("us", tz="UTC")),
        ]
    )
    count = 0
    with pq.ParquetWriter(path, schema) as writer:
        for chunk in chunks:
            columns = {name: [row[name] for row in chunk] for name in COLUMNS}
            columns["predicted_at"] = [datetime.fromisoformat(t) for t in columns["predicted_at"]]
            writer.write_table(pa.table(columns, schema=schema))
            count += len(chunk)
    return count
