"""The code location loads as a whole, and Dagster's own validation accepts it."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
import yaml
from dagster import (
    AssetKey,
    DefaultSensorStatus,
    Definitions,
    EnvVar,
    validate_run_config,
)

from batchinfer_dagster import ledger
from batchinfer_dagster.definitions import defs
from batchinfer_dagster.defs.deployments import resources_for
from batchinfer_dagster.defs.partitions import PREDICTION_BATCHES
from batchinfer_dagster.defs.resources.database import PostgresDatabase, SqliteDatabase
from batchinfer_dagster.defs.resources.feature_store import LocalFeatureStoreResource
from batchinfer_dagster.defs.resources.model_server import HttpModelServer, VertexModelEndpoint
from batchinfer_dagster.defs.resources.request_queue import LocalRequestQueue, PubSubRequestQueue
from batchinfer_dagster.defs.resources.vertex_feature_store import VertexFeatureStoreResource
from batchinfer_dagster.settings import Settings
from batchinfer_testing.model_server import REPO_ROOT


def test_definitions_load_with_lineage_checks_and_sensor() -> None:
    Definitions.validate_loadable(defs)
    graph = defs.resolve_asset_graph()
    assert set(graph.get_all_asset_keys()) == {
        AssetKey("data_points"),
        AssetKey("features"),
        AssetKey("predictions"),
        AssetKey("rollout_report"),
    }
    assert graph.get(AssetKey("data_points")).is_observable
    assert not graph.get(AssetKey("data_points")).is_materializable
    assert graph.get(AssetKey("features")).parent_keys == {AssetKey("data_points")}
    assert graph.get(AssetKey("predictions")).parent_keys == {AssetKey("features")}
    predictions = defs.resolve_assets_def("predictions")
    assert predictions.partitions_def.name == PREDICTION_BATCHES
    assert {key.name for key in predictions.check_keys} == {
        "one_prediction_per_record",
        "scores_sum_to_one",
        "labels_are_the_configured_labels",
        "records_predicted",
    }
    assert predictions.op.pool == "model_server"
    sensor = defs.resolve_sensor_def("prediction_requests_sensor")
    assert sensor.default_status == DefaultSensorStatus.RUNNING
    assert sensor.job_name == "predictions_job"
    assert defs.resolve_job_def("request_predictions_job").name == "request_predictions_job"
    assert set(defs.resources) == {
        "database",
        "ledger",
        "request_queue",
        "feature_store",
        "model_server",
    }


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


def test_settings_pick_the_local_implementation_of_every_system(tmp_path: Path) -> None:
    settings = Settings(
        home=tmp_path,
        labels=("a", "b c"),
        batch_size=7,
        batch_max_wait_seconds=2.5,
        feature_wait_seconds=1.5,
        model_url="http://127.0.0.1:9",
    )
    resources = resources_for(settings)
    assert isinstance(resources.database, SqliteDatabase)
    assert resources.database.url() == settings.resolved_database_url
    assert isinstance(resources.request_queue, LocalRequestQueue)
    assert isinstance(resources.feature_store, LocalFeatureStoreResource)
    assert isinstance(resources.model_server, HttpModelServer)
    assert resources.model_server.parameters().candidate_labels == ("a", "b c")
    assert (resources.ledger.batch_size, resources.ledger.feature_wait_seconds) == (7, 1.5)
    assert resources.ledger.batch_closing() == ledger.BatchClosing(
        max_size=7, max_wait=timedelta(seconds=2.5)
    )


def test_settings_pick_the_google_implementation_of_every_system(tmp_path: Path) -> None:
    settings = Settings(
        home=tmp_path,
        database_url="postgresql+psycopg://u:secret@db/app",
        queue="pubsub",
        pubsub_project="p",
        feature_store="vertex",
        vertex_project="p",
        vertex_bigquery_table="p.d.records",
        model_url="vertex://projects/p/locations/europe-west4/endpoints/1",
    )
    resources = resources_for(settings)
    assert isinstance(resources.database, PostgresDatabase)
    assert isinstance(resources.request_queue, PubSubRequestQueue)
    assert resources.request_queue.topology().project == "p"
    assert isinstance(resources.feature_store, VertexFeatureStoreResource)
    assert resources.feature_store.bigquery.project == "p"
    assert isinstance(resources.model_server, VertexModelEndpoint)


def test_the_code_location_shows_the_database_url_as_an_env_var(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The UI shows resource config: a URL with a password must be a variable's name there."""
    monkeypatch.setenv("BATCHINFER_DATABASE_URL", "postgresql+psycopg://u:secret@db/app")
    settings = Settings(home=tmp_path)
    shown = resources_for(settings, secrets_from_env=True).database
    assert isinstance(shown, PostgresDatabase)
    assert "secret" not in repr(shown.database_url)
    assert shown.database_url == EnvVar("BATCHINFER_DATABASE_URL")
    assert "secret" in resources_for(settings).database.url()  # the CLI resolves it itself


def test_every_job_shows_its_launchpad_config_and_it_is_valid() -> None:
    """The YAML in each job's description is what the launchpad accepts for that job."""
    for job in defs.resolve_all_job_defs():
        if job.name.startswith("__"):  # Dagster's implicit asset job
            continue
        assert "Launchpad config" in (job.description or ""), job.name
        if "```yaml" not in job.description:
            validate_run_config(job, {})  # needs none: raises if it did
            continue
        snippet = job.description.split("```yaml\n", 1)[1].split("```", 1)[0]
        run_config = yaml.safe_load(snippet)
        assert validate_run_config(job, run_config), job.name
    request = defs.resolve_job_def("request_predictions_job").description
    assert "record_ids: [1, 2, 3]" in request
