"""The production dagster.yaml: valid for Dagster 1.13, and what it configures takes effect."""

from __future__ import annotations

import re
from pathlib import Path

import hcl2
import pytest
import yaml
from dagster import DagsterInstance
from dagster._config import process_config
from dagster._core.instance.config import dagster_instance_config
from dagster._core.storage.config import pg_config
from dagster_postgres.utils import pg_url_from_config

ROOT = Path(__file__).resolve().parents[2]
PG_ENV = {
    "DAGSTER_PG_HOST": "10.20.0.3",
    "DAGSTER_PG_PORT": "5432",
    "DAGSTER_PG_USER": "batchinfer",
    "DAGSTER_PG_PASSWORD": "p@ss:word",
    "DAGSTER_PG_DB": "dagster",
    "DAGSTER_COMPUTE_LOGS_BUCKET": "p-dagster-logs",
    "GOOGLE_CLOUD_PROJECT": "p",
    "GOOGLE_CLOUD_REGION": "europe-west4",
}


@pytest.fixture
def pg_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in PG_ENV.items():
        monkeypatch.setenv(name, value)


def production_config() -> dict:
    return yaml.safe_load((ROOT / "deploy" / "dagster.yaml").read_text())


@pytest.mark.usefixtures("pg_env")
def test_dagster_yaml_passes_the_instance_schema() -> None:
    config, custom_class = dagster_instance_config(str(ROOT / "deploy"))
    assert custom_class is None
    assert config["run_coordinator"]["class"] == "QueuedRunCoordinator"
    assert config["run_launcher"]["class"] == "CloudRunRunLauncher"


@pytest.mark.usefixtures("pg_env")
def test_postgres_storage_comes_from_the_environment() -> None:
    storage = production_config()["storage"]["postgres"]
    resolved = process_config(pg_config(), storage)
    assert resolved.success, resolved.errors
    assert pg_url_from_config(resolved.value) == (
        "postgresql+psycopg2://batchinfer:p%40ss%3Aword@10.20.0.3:5432/dagster"
        "?sslmode=verify-ca&sslrootcert=%2Fetc%2Fbatchinfer%2Fcloudsql%2Fserver-ca.pem"
    )


def test_missing_postgres_password_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in PG_ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("DAGSTER_PG_PASSWORD")
    resolved = process_config(pg_config(), production_config()["storage"]["postgres"])
    assert not resolved.success
    assert "DAGSTER_PG_PASSWORD" in str(resolved.errors)


def terraform_defaults() -> dict[str, object]:
    options = hcl2.SerializationOptions(
        with_comments=False, explicit_blocks=False, strip_string_quotes=True
    )
    variables = hcl2.load(
        (ROOT / "terraform" / "variables.tf").open(), serialization_options=options
    )
    return {
        name: body.get("default") for block in variables["variable"] for name, body in block.items()
    }


def limits_by_formula(model_server_max_instances: int) -> tuple[int, int]:
    """(model_server pool, max_concurrent_runs): the formula of dagster.yaml and dagster.tf."""
    pool = model_server_max_instances * 2
    return pool, pool + 3


def test_terraform_computes_the_limits_by_the_same_formula() -> None:
    text = (ROOT / "terraform" / "dagster.tf").read_text()
    assert re.search(r"model_server_pool\s*=\s*var\.model_server_max_instances \* 2\n", text)
    assert re.search(r"max_concurrent_runs\s*=\s*var\.model_server_max_instances \* 2 \+ 3\n", text)


@pytest.mark.usefixtures("adc_key_file", "pg_env")
def test_queue_retries_monitoring_and_limits_take_effect(tmp_path: Path) -> None:
    """The real file with only the outside services (Postgres, GCS) swapped for local ones."""
    config = production_config()
    config["storage"] = {"sqlite": {"base_dir": str(tmp_path / "storage")}}
    config["compute_logs"] = {
        "module": "dagster._core.storage.local_compute_log_manager",
        "class": "LocalComputeLogManager",
        "config": {"base_dir": str(tmp_path / "logs")},
    }
    (tmp_path / "dagster.yaml").write_text(yaml.safe_dump(config))

    with DagsterInstance.from_config(str(tmp_path)) as instance:
        assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"
        assert instance.run_retries_enabled
        assert instance.run_retries_max_retries == 2
        assert not instance.run_retries_retry_on_asset_or_op_failure  # reconcile retries
        concurrency = instance.get_concurrency_config()
        pool, max_runs = limits_by_formula(terraform_defaults()["model_server_max_instances"])
        assert concurrency.pool_config.default_pool_limit == pool
        assert concurrency.pool_config.pool_granularity.value == "run"
        assert concurrency.run_queue_config.max_concurrent_runs == max_runs
        assert instance.get_settings("sensors")["use_threads"] is True
        # The daemon evaluates automation-condition sensors (bigquery_predictions_sensor).
        assert instance.auto_materialize_use_sensors

        # Orphans fail: the launcher reports its workers' health to run monitoring, and every
        # run is bounded in time, by Dagster and by Cloud Run alike.
        launcher = instance.run_launcher
        assert type(launcher).__name__ == "CloudRunRunLauncher"
        assert launcher.supports_check_run_worker_health
        assert instance.run_monitoring_enabled
        assert instance.run_monitoring_settings["max_runtime_seconds"] == launcher.run_timeout
        assert terraform_defaults()["run_max_runtime_seconds"] == launcher.run_timeout
        assert launcher.fully_qualified_job_name("batchinfer_dagster") == (
            "projects/p/locations/europe-west4/jobs/batchinfer-run-worker"
        )
        assert (
            terraform_defaults()["name_prefix"] + "-run-worker"
            == (launcher.job_name_by_code_location["batchinfer_dagster"])
        )
