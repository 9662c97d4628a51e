"""What the CLI does is visible in Dagster: the real ``batchinfer`` program records the same asset
events, with the same metadata, as observing ``data_points`` and materializing ``features`` from
Dagster (``import-data`` runs the ``features`` asset itself, its one producer); checked through
the Dagster instance the UI reads (``DAGSTER_HOME``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import sqlalchemy as sa
from dagster import AssetKey, DagsterInstance, DagsterRunStatus, RunsFilter, materialize

# Dagster's in-process observation of source assets (not exported at the top level in 1.13).
from dagster._core.definitions.observe import observe

from batchinfer_dagster.defs.assets import data_points, features
from batchinfer_dagster.defs.feature_imports import SOURCE_TAG
from batchinfer_dagster.settings import Settings
from batchinfer_testing.deployment import engine_of, migrate, resources_of

BATCHINFER = str(Path(sys.executable).parent / "batchinfer")
DATA_VERSION = "dagster/data_version"


def run_batchinfer(
    settings: Settings, dagster_home: Path, *args: str
) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "BATCHINFER_HOME": str(settings.home),
        "BATCHINFER_DATABASE_URL": settings.resolved_database_url,
        "DAGSTER_HOME": str(dagster_home),
    }
    return subprocess.run([BATCHINFER, *args], env=env, capture_output=True, text=True, check=False)


def batchinfer(settings: Settings, dagster_home: Path, *args: str) -> str:
    result = run_batchinfer(settings, dagster_home, *args)
    assert result.returncode == 0, result.stderr
    assert "warning" not in result.stderr, result.stderr
    # No event log of the run import-data makes: the command prints what it did itself.
    assert " - dagster - " not in result.stderr, result.stderr
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
        # A run of the features asset made it, not a report beside the asset.
        cli_run = instance.get_run_by_id(imported.run_id)
        assert cli_run is not None
        assert cli_run.status == DagsterRunStatus.SUCCESS
        assert cli_run.tags[SOURCE_TAG] == "cli import-data"

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


def test_import_data_full_runs_the_asset_with_its_config(
    app_settings: Settings, tmp_path: Path
) -> None:
    dagster_home = tmp_path / "dagster"
    batchinfer(app_settings, dagster_home, "add-data-point", "one")
    batchinfer(app_settings, dagster_home, "import-data")
    again = batchinfer(app_settings, dagster_home, "import-data")
    rebuilt = batchinfer(app_settings, dagster_home, "import-data", "--full")
    assert '"imported": 0' in again.splitlines()[0]
    assert '"full_import": true' in rebuilt.splitlines()[0]
    assert '"imported": 1' in rebuilt.splitlines()[0]
    with DagsterInstance.from_config(str(dagster_home)) as instance:
        runs = instance.get_runs(RunsFilter(tags={SOURCE_TAG: "cli import-data"}))
        assert len(runs) == 3
        assert runs[0].run_config["ops"]["features"]["config"] == {"full": True}


def test_a_failed_import_is_one_line_and_a_failed_run(tmp_path: Path) -> None:
    # SQLite, whose missing table is an OperationalError, an error the CLI shows as one line.
    app_settings = Settings(home=tmp_path / "home")
    migrate(app_settings)
    dagster_home = tmp_path / "dagster"
    batchinfer(app_settings, dagster_home, "add-data-point", "one")
    # Dagster's notices of a new home (no dagster.yaml; telemetry, at the first run) are not
    # this test's: they come before the failing import.
    (dagster_home / "dagster.yaml").touch()
    batchinfer(app_settings, dagster_home, "import-data")
    with engine_of(app_settings).begin() as connection:
        connection.execute(sa.text("DROP TABLE features"))
    failed = run_batchinfer(app_settings, dagster_home, "import-data")
    assert failed.returncode == 1
    assert failed.stdout == ""
    [line] = failed.stderr.splitlines()
    # The asset's own error, as the CLI showed it before the import ran through the asset.
    assert line == "Error: database error: no such table: features"
    with DagsterInstance.from_config(str(dagster_home)) as instance:
        failed_run, imported_run = instance.get_runs(
            RunsFilter(tags={SOURCE_TAG: "cli import-data"})
        )
        assert failed_run.status == DagsterRunStatus.FAILURE
        assert imported_run.status == DagsterRunStatus.SUCCESS
