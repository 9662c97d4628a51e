"""The code location loads as a whole, and Dagster's own validation accepts it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from dagster import AssetKey, DefaultSensorStatus, Definitions

from batchinfer_dagster.assets import BatchinferResource
from batchinfer_dagster.definitions import defs
from batchinfer_dagster.partitions import PREDICTION_BATCHES
from batchinfer_dagster.settings import Settings
from tests.dagster.harness import REPO_ROOT


def test_definitions_load_with_lineage_checks_and_sensor() -> None:
    Definitions.validate_loadable(defs)
    graph = defs.resolve_asset_graph()
    assert set(graph.get_all_asset_keys()) == {
        AssetKey("data_points"),
        AssetKey("feature_store"),
        AssetKey("predictions"),
    }
    assert graph.get(AssetKey("feature_store")).parent_keys == {AssetKey("data_points")}
    assert graph.get(AssetKey("predictions")).parent_keys == {AssetKey("feature_store")}
    predictions = defs.resolve_assets_def("predictions")
    assert predictions.partitions_def.name == PREDICTION_BATCHES
    assert {key.name for key in predictions.check_keys} == {
        "one_prediction_per_record",
        "scores_sum_to_one",
        "labels_are_the_configured_labels",
    }
    assert predictions.op.pool == "model_server"
    sensor = defs.resolve_sensor_def("prediction_requests_sensor")
    assert sensor.default_status == DefaultSensorStatus.RUNNING
    assert sensor.job_name == "predictions_job"
    assert defs.resolve_job_def("predict_records_job").name == "predict_records_job"


def test_dagster_definitions_validate_passes(tmp_path: Path) -> None:
    environment = {**os.environ, "DAGSTER_HOME": str(tmp_path)}
    (tmp_path / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    completed = subprocess.run(
        [
            str(Path(sys.executable).parent / "dagster"),
            "definitions",
            "validate",
            "-w",
            "workspace.yaml",
        ],
        cwd=REPO_ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert "Validation successful" in completed.stdout + completed.stderr


def test_resource_gives_back_exactly_the_settings_it_was_built_from(tmp_path: Path) -> None:
    settings = Settings(
        home=tmp_path,
        database_url="sqlite:///x.db",
        pubsub_emulator_host="127.0.0.1:8681",
        labels=("a", "b c"),
        batch_size=7,
        feature_wait_seconds=1.5,
    )
    resource = BatchinferResource.for_settings(settings)
    assert resource.get_settings() == settings
    assert BatchinferResource(settings_json='{"batch_size": 3}').get_settings().batch_size == 3


def test_resource_refuses_settings_json_that_is_not_an_object() -> None:
    with pytest.raises(ValueError, match=r"must be a JSON object of Settings fields, got '\[1\]'"):
        BatchinferResource(settings_json="[1]").get_settings()
