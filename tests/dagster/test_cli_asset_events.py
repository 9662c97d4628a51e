"""What the CLI does is visible in Dagster: the real ``batchinfer`` program records the same asset
events, with the same metadata, as observing ``data_points`` and materializing ``features`` from
Dagster; checked through the Dagster instance the UI reads (``DAGSTER_HOME``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from dagster import AssetKey, DagsterInstance, materialize

# Dagster's in-process observation of source assets (not exported at the top level in 1.13).
from dagster._core.definitions.observe import observe

from batchinfer_dagster.defs.assets import data_points, features
from batchinfer_dagster.settings import Settings
from batchinfer_testing.deployment import resources_of

BATCHINFER = str(Path(sys.executable).parent / "batchinfer")
DATA_VERSION = "dagster/data_version"


def batchinfer(settings: Settings, dagster_home: Path, *args: str) -> str:
    env = {
        **os.environ,
        "BATCHINFER_HOME": str(settings.home),
        "BATCHINFER_DATABASE_URL": settings.resolved_database_url,
        "DAGSTER_HOME": str(dagster_home),
    }
    result = subprocess.run(
        [BATCHINFER, *args], env=env, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "warning" not in result.stderr, result.stderr
    return result.stdout


def metadata_values(event_record: object) -> dict[str, object]:
    metadata = event_record.asset_materialization or event_record.asset_observation  # type: ignore[attr-defined]
    return {key: value.value for key, value in metadata.metadata.items()}


def test_cli_records_the_same_events_as_dagster(app_settings: Settings, tmp_path: Path) -> None:
    dagster_home = tmp_path / "dagster"
    batchinfer(app_settings, dagster_home, "add-data-point", "test input data 1")
    (tmp_path / "more.jsonl").write_text('{"text": "two"}\n{"text": "three"}\n')
    batchinfer(app_settings, dagster_home, "load", str(tmp_path / "more.jsonl"))
    batchinfer(app_settings, dagster_home, "import-data")

    with DagsterInstance.from_config(str(dagster_home)) as instance:
        observations = instance.fetch_observations(AssetKey("data_points"), limit=10).records
        assert len(observations) == 2  # one per command that added records
        from_cli = observations[0]  # newest first
        assert from_cli.run_id == ""  # runless: no run was launched for it
        assert from_cli.asset_observation.tags[DATA_VERSION] == "3:3"
        [imported] = instance.fetch_materializations(AssetKey("features"), limit=10).records
        assert instance.get_latest_materialization_event(AssetKey("features")) is not None

        resources = resources_of(app_settings)
        assert observe([data_points], instance=instance, resources=resources).success
        assert materialize([features, data_points], instance=instance, resources=resources).success
        from_dagster = instance.fetch_observations(AssetKey("data_points"), limit=1).records[0]
        [again, _] = instance.fetch_materializations(AssetKey("features"), limit=10).records

    assert from_dagster.run_id != ""
    assert metadata_values(from_cli) == metadata_values(from_dagster)
    assert metadata_values(from_cli)["records"] == 3
    assert (
        from_cli.asset_observation.tags[DATA_VERSION]
        == (from_dagster.asset_observation.tags[DATA_VERSION])
    )
    cli_import, dagster_import = metadata_values(imported), metadata_values(again)
    assert cli_import.keys() == dagster_import.keys()
    assert (cli_import["rows_imported"], cli_import["total_records"]) == (3, 3)
    # The import is incremental: the CLI's import already moved the three records, and only
    # those changed within the watermark's 5 s safety margin move again.
    assert 0 <= dagster_import["rows_imported"] <= 3
    assert dagster_import["total_records"] == 3
