"""``batchinfer export``: the stored predictions in CSV, JSONL and Parquet, all or since a time,
streamed with bounded memory."""

from __future__ import annotations

import csv
import json
import tracemalloc
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

from batchinfer_dagster import db
from batchinfer_dagster.export import EXPORT_CHUNK, export_predictions
from batchinfer_dagster.receipts import legacy_configuration_digest
from batchinfer_dagster.settings import Settings
from batchinfer_testing.cli_runner import run
from batchinfer_testing.deployment import engine_of

STORED = datetime(2026, 12, 5, 9, 0, tzinfo=UTC)
LABELS = ["billing", "mobile", "website", "account access"]
SCORES = [0.7, 0.2, 0.06, 0.04]


def store(
    settings: Settings,
    record_ids: range,
    model: str,
    at: datetime = STORED,
    *,
    current: bool = True,
) -> None:
    rows = [
        {
            "record_id": record_id,
            # One configuration per model (as migration 0005 gives rows of unknown receipt); a
            # replaced model's rows are stored with current=False.
            "configuration": legacy_configuration_digest(model),
            "is_current": current,
            "model": model,
            "sequence": f"text {record_id}",
            "labels": LABELS,
            "scores": SCORES,
            "created_at": at,
            "updated_at": at,
        }
        for record_id in record_ids
    ]
    with engine_of(settings).begin() as connection:
        for start in range(0, len(rows), 5000):
            connection.execute(sa.insert(db.predictions), rows[start : start + 5000])


def read(path: Path) -> list[dict]:
    if path.suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as handle:
            return [
                {
                    **row,
                    "record_id": int(row["record_id"]),
                    "score": float(row["score"]),
                    "current": json.loads(row["current"]),
                    "labels": json.loads(row["labels"]),
                    "scores": json.loads(row["scores"]),
                }
                for row in csv.DictReader(handle)
            ]
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text().splitlines()]
    table = pq.read_table(path).to_pylist()
    return [{**row, "predicted_at": row["predicted_at"].isoformat()} for row in table]


def exported_rows(settings: Settings, tmp_path: Path, name: str, *args: str) -> list[dict]:
    """Run ``export`` into a folder of its own; the file's rows (the folder holds only it)."""
    out = tmp_path / name
    out.mkdir()
    path = out / name
    result = run(settings, "export", *args, str(path))
    assert result.exit_code == 0, result.output
    rows = read(path)
    assert json.loads(result.stdout) == {"exported": len(rows), "file": str(path)}
    assert list(out.iterdir()) == [path]
    return rows


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_export_writes_each_records_current_prediction_with_its_receipt(
    app_settings: Settings, tmp_path: Path, suffix: str
) -> None:
    store(app_settings, range(1, 3), "model-a", current=False)
    store(app_settings, range(2, 4), "model-b")

    rows = exported_rows(app_settings, tmp_path, f"predictions{suffix}")

    assert [(row["record_id"], row["model"], row["current"]) for row in rows] == [
        (2, "model-b", True),
        (3, "model-b", True),
    ]
    assert rows[0]["configuration"] == legacy_configuration_digest("model-b")
    assert rows[0]["label"] == "billing"
    assert rows[0]["score"] == pytest.approx(0.7)
    assert rows[0]["labels"] == LABELS
    assert rows[0]["scores"] == pytest.approx(SCORES)
    assert datetime.fromisoformat(rows[0]["predicted_at"]) == STORED


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_export_of_all_configurations_marks_the_current_ones(
    app_settings: Settings, tmp_path: Path, suffix: str
) -> None:
    store(app_settings, range(1, 3), "model-a", current=False)
    store(app_settings, range(2, 4), "model-b")

    rows = exported_rows(app_settings, tmp_path, f"all{suffix}", "--all-configurations")

    assert sorted((row["record_id"], row["model"], row["current"]) for row in rows) == [
        (1, "model-a", False),
        (2, "model-a", False),
        (2, "model-b", True),
        (3, "model-b", True),
    ]
    assert {row["configuration"] for row in rows if row["model"] == "model-a"} == {
        legacy_configuration_digest("model-a")
    }


@pytest.mark.parametrize(
    ("since", "exported"),
    [(STORED, 2), (STORED + timedelta(microseconds=1), 1)],
    ids=["at-the-time", "just-after"],
)
def test_export_since_a_time_includes_that_time(
    app_settings: Settings, tmp_path: Path, since: datetime, exported: int
) -> None:
    store(app_settings, range(1, 2), "m", at=STORED)
    store(app_settings, range(2, 3), "m", at=STORED + timedelta(seconds=1))

    result = run(app_settings, "export", "--since", since.isoformat(), str(tmp_path / "o.jsonl"))

    assert json.loads(result.stdout)["exported"] == exported


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["out.txt"], "unknown format '.txt'"),
        (["--since", "yesterday", "out.csv"], "is not an ISO 8601 time"),
    ],
)
def test_a_bad_export_is_one_line_and_writes_nothing(
    app_settings: Settings, tmp_path: Path, args: list[str], error: str
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    args = [*args[:-1], str(out / args[-1])]

    result = run(app_settings, "export", *args)

    assert result.exit_code == 1
    assert error in result.stderr
    assert list(out.iterdir()) == []


def export_peak_bytes(settings: Settings, path: Path) -> int:
    tracemalloc.start()
    try:
        export_predictions(engine_of(settings), path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_export_streams_in_chunks_with_bounded_memory(tmp_path: Path, suffix: str) -> None:
    """Ten times the rows, not ten times the memory: one chunk of rows is held at a time."""
    settings = Settings(home=tmp_path / "home")
    run(settings, "status")  # migrates the embedded database
    small_rows = 2 * EXPORT_CHUNK
    store(settings, range(1, small_rows + 1), "m")
    export_peak_bytes(settings, tmp_path / f"warm{suffix}")
    small = export_peak_bytes(settings, tmp_path / f"small{suffix}")
    store(settings, range(small_rows + 1, 10 * small_rows + 1), "m")

    large = export_peak_bytes(settings, tmp_path / f"large{suffix}")

    assert len((tmp_path / f"large{suffix}").read_text().splitlines()) >= 10 * small_rows
    assert large < 1.5 * small, (small, large)
