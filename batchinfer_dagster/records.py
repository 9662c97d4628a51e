"""Records (``data_points``): adding one, bulk loading CSV, JSONL or Parquet files, reading back.

CSV and JSONL are read with the standard library, line by line: every error names its file and
line, and hostile files (not UTF-8, NUL bytes, huge fields, deep nesting) are refused precisely.
Parquet, a columnar binary format, is read with pandas (pyarrow) in row groups.
"""

from __future__ import annotations

import codecs
import csv
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import sqlalchemy as sa
from sqlalchemy import Engine

from batchinfer_dagster import db
from batchinfer_dagster.chunks import chunked

if TYPE_CHECKING:
    import pandas as pd

# Rows per insert: bounded memory for files of any size.
LOAD_CHUNK = 5000
# UTF-8, with the byte-order mark that Excel and Notepad write skipped when present.
FILE_ENCODING = "utf-8-sig"
MAX_CSV_FIELD_CHARS = 64 * 1024 * 1024


class InvalidRecordError(ValueError):
    """A record the user gave cannot be stored (empty text, unreadable file line)."""


def check_text(text: str, where: str = "text") -> str:
    """``text`` when both databases can store it: not empty, valid Unicode, no NUL character.

    A command-line argument or file that is not UTF-8 arrives as lone surrogates, which no
    database driver can encode; PostgreSQL ``text`` cannot hold NUL (0x00).
    """
    if not text or not text.strip():
        raise InvalidRecordError(f"{where} is empty: a data point needs some text")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        character = text[error.start]
        # A byte that was not UTF-8 in argv or a file name comes back as U+DC80..U+DCFF.
        bad = (
            f"byte {character.encode('utf-8', 'surrogateescape')!r}"
            if "\udc80" <= character <= "\udcff"
            else f"lone surrogate {character!a}"
        )
        raise InvalidRecordError(
            f"{where} is not valid UTF-8 ({bad} at character {error.start}); convert it to UTF-8"
        ) from None
    if "\x00" in text:
        raise InvalidRecordError(
            f"{where} contains a NUL character (at {text.index(chr(0))}); remove it"
        )
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
            [{"text": text, "created_at": now, "updated_at": now} for text in texts],
        )
        return list(result.scalars())


def edit_record(engine: Engine, record_id: int, text: str) -> bool:
    """Replace a record's text (``updated_at`` moves, so the next import moves the edit);
    False when there is no such record."""
    check_text(text)
    table = db.data_points
    with engine.begin() as connection:
        changed = connection.execute(
            sa.update(table)
            .where(table.c.id == record_id)
            .values(text=text, updated_at=db.utcnow())
        )
    return changed.rowcount == 1


def read_texts(path: Path) -> Iterator[str]:
    """Texts of a CSV or Parquet (a ``text`` column) or JSONL (a ``text`` field) file, checked.

    Files are read as UTF-8 with an optional byte-order mark (``utf-8-sig``): Excel's "CSV UTF-8"
    starts with one. A file that is not UTF-8 is refused with the byte offset of the first bad
    byte, never guessed at.
    """
    if not path.is_file():
        raise InvalidRecordError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        reader = _read_csv
    elif suffix in {".jsonl", ".ndjson", ".json"}:
        reader = _read_jsonl
    elif suffix == ".parquet":
        reader = _read_parquet
    else:
        raise InvalidRecordError(f"{path}: unknown format {suffix!r}; use .csv, .jsonl or .parquet")
    try:
        yield from reader(path)
    except UnicodeDecodeError as error:
        raise InvalidRecordError(
            f"{path}: not UTF-8 ({error.reason} at byte {first_undecodable_byte(path)}); "
            "save it as UTF-8 (in Excel: CSV UTF-8)"
        ) from None


def first_undecodable_byte(path: Path, block: int = 1 << 20) -> int:
    """The file offset of the first byte that is not UTF-8, read in blocks (bounded memory)."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0
    with path.open("rb") as handle:
        while data := handle.read(block):
            pending = len(decoder.getstate()[0])  # bytes of a character cut by the block
            try:
                decoder.decode(data)
            except UnicodeDecodeError as error:
                return offset - pending + error.start
            offset += len(data)
    pending = len(decoder.getstate()[0])
    return offset - pending if pending else -1


def _read_csv(path: Path) -> Iterator[str]:
    # The csv module refuses fields over 128 KiB by default; a long record is a legal record.
    csv.field_size_limit(max(csv.field_size_limit(), MAX_CSV_FIELD_CHARS))
    with path.open(newline="", encoding=FILE_ENCODING) as handle:
        reader = csv.DictReader(handle)
        try:
            if not reader.fieldnames or "text" not in reader.fieldnames:
                raise InvalidRecordError(
                    f"{path}: no 'text' column (columns: {reader.fieldnames!r:.300})"
                )
            for row in reader:
                yield check_text(row["text"] or "", f"{path}:{reader.line_num}")
        except csv.Error as error:  # a NUL byte, a field over csv.field_size_limit()
            raise InvalidRecordError(f"{path}:{reader.line_num}: not CSV ({error})") from None


def _read_jsonl(path: Path) -> Iterator[str]:
    with path.open(encoding=FILE_ENCODING) as handle:
        for line, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            try:
                item = json.loads(raw)
            except RecursionError:
                raise InvalidRecordError(f"{path}:{line}: JSON nested too deeply") from None
            except ValueError as exc:  # JSONDecodeError, or a number of over 4,300 digits
                raise InvalidRecordError(f"{path}:{line}: not JSON ({exc})") from exc
            if not isinstance(item, dict) or not isinstance(item.get("text"), str):
                raise InvalidRecordError(f"{path}:{line}: needs a string field 'text'")
            yield check_text(item["text"], f"{path}:{line}")


def _read_parquet(path: Path) -> Iterator[str]:
    """The ``text`` column, a row group at a time; errors name the row (from 1)."""
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except (OSError, ValueError) as error:
        raise InvalidRecordError(f"{path}: not Parquet ({error})") from None
    if "text" not in parquet.schema_arrow.names:
        raise InvalidRecordError(
            f"{path}: no 'text' column (columns: {parquet.schema_arrow.names!r:.300})"
        )
    row = 0
    for group in range(parquet.num_row_groups):
        texts: pd.Series = parquet.read_row_group(group, columns=["text"]).to_pandas()["text"]
        for text in texts:
            row += 1
            where = f"{path}: row {row}"
            if not isinstance(text, str):
                raise InvalidRecordError(f"{where}: 'text' is {text!r:.100}, not a string")
            yield check_text(text, where)


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


class UnknownRecordError(LookupError):
    """No record has this id (never added, or deleted already)."""


@dataclass(frozen=True)
class Deletion:
    """What deleting a record removed: the record, and its predictions (their ``sequence`` is
    the record's text)."""

    record_id: int
    predictions: int

    def document(self) -> dict[str, int]:
        return {"deleted": self.record_id, "predictions_deleted": self.predictions}


def delete_record(engine: Engine, record_id: int) -> Deletion:
    """Delete a record, its predictions and its staleness rows in one transaction (an erasure
    request).

    The database leaves a tombstone (migration 0004's trigger, ``record_deletions``), so the next
    feature import removes the record from the feature store; until then, and for any request
    after, a run dead-letters requests for it as "unknown record id" (``ledger.settle_batch``)
    rather than predicting its old text. Raises ``UnknownRecordError`` when there is no such
    record.
    """
    with engine.begin() as connection:
        deleted = connection.execute(
            sa.delete(db.data_points).where(db.data_points.c.id == record_id)
        ).rowcount
        if not deleted:
            raise UnknownRecordError(
                f"there is no record {record_id} (never added, or deleted already)"
            )
        predictions = connection.execute(
            sa.delete(db.predictions).where(db.predictions.c.record_id == record_id)
        ).rowcount
        # What staleness kept of it: the digest of its imported text and its stale requests.
        for table in (db.record_text_digests, db.stale_requests):
            connection.execute(sa.delete(table).where(table.c.record_id == record_id))
    return Deletion(record_id=record_id, predictions=predictions)


def get_text(engine: Engine, record_id: int) -> str | None:
    with engine.connect() as connection:
        return connection.execute(
            sa.select(db.data_points.c.text).where(db.data_points.c.id == record_id)
        ).scalar_one_or_none()
