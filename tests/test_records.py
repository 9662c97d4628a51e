"""Loading records from CSV, JSONL and Parquet: chunk boundaries, per-line errors."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from batchinfer_dagster.records import LOAD_CHUNK, InvalidRecordError, load_file, read_texts
from batchinfer_dagster.settings import Settings
from batchinfer_testing.deployment import engine_of


@pytest.mark.parametrize("count", [LOAD_CHUNK, LOAD_CHUNK + 1])
def test_csv_across_a_chunk_boundary_keeps_every_text_in_order(count: int, tmp_path: Path) -> None:
    path = tmp_path / "records.csv"
    pd.DataFrame({"text": [f"text, {i}" for i in range(count)], "other": 1}).to_csv(
        path, index=False
    )
    assert list(read_texts(path)) == [f"text, {i}" for i in range(count)]


def test_an_empty_csv_text_names_its_line(tmp_path: Path) -> None:
    path = tmp_path / "records.csv"
    path.write_text('text\nfine\n""\nalso fine\n')
    with pytest.raises(InvalidRecordError, match=rf"{path}:3 is empty"):
        list(read_texts(path))


def test_a_jsonl_line_that_is_not_json_names_its_line(tmp_path: Path) -> None:
    path = tmp_path / "records.jsonl"
    path.write_text('{"text": "one"}\n\n{"text": "two"\n')
    with pytest.raises(InvalidRecordError, match=rf"{path}:3: not JSON"):
        list(read_texts(path))


def test_parquet_loads_and_a_missing_column_is_named(
    app_settings: Settings, tmp_path: Path
) -> None:
    path = tmp_path / "records.parquet"
    pd.DataFrame({"text": ["a", "b", "c"]}).to_parquet(path)
    assert load_file(engine_of(app_settings), path) == [1, 3]
    wrong = tmp_path / "wrong.parquet"
    pd.DataFrame({"body": ["a"]}).to_parquet(wrong)
    with pytest.raises(InvalidRecordError, match="no 'text' column"):
        list(read_texts(wrong))


def test_an_unknown_format_names_the_ones_known(tmp_path: Path) -> None:
    path = tmp_path / "records.xml"
    path.write_text("<text/>")
    with pytest.raises(InvalidRecordError, match=r"use \.csv, \.jsonl or \.parquet"):
        list(read_texts(path))
