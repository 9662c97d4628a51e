"""The production dagster.yaml: valid for Dagster 1.13, and what it configures takes effect."""

from __future__ import annotations

from pathlib import Path

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
}


@pytest.fixture
def pg_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in PG_ENV.items():
        monkeypatch.setenv(name, value)


def production_config() -> dict:
    return yaml.safe_load((ROOT / "deploy" / "dagster.yaml").read_text())


@pytest.mark.usefixtures("pg_env")
def test_dagster_yaml_passes_the_instance_schema() -> None:
    config, custom_class = dagster_instance_config(str(ROOT))
    assert custom_class is None
    assert config["run_coordinator"]["class"] == "QueuedRunCoordinator"
    assert config["run_launcher"]["class"] == "DefaultRunLauncher"


@pytest.mark.usefixtures("pg_env")
def test_postgres_storage_comes_from_the_environment() -> None:
    storage = production_config()["storage"]["postgres"]
    resolved = process_config(pg_config(), storage)
    assert resolved.success, resolved.errors
    assert pg_url_from_config(resolved.value) == (
        "postgresql+psycopg2://batchinfer:p%40ss%3Aword@10.20.0.3:5432/dagster?sslmode=require"
    )


def test_missing_postgres_password_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in PG_ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("DAGSTER_PG_PASSWORD")
    resolved = process_config(pg_config(), production_config()["storage"]["postgres"])
    assert not resolved.success
    assert "DAGSTER_PG_PASSWORD" in str(resolved.errors)


def test_queue_retries_and_pool_limits_take_effect(tmp_path: Path) -> None:
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
        assert concurrency.pool_config.default_pool_limit == 4
        assert concurrency.pool_config.pool_granularity.value == "run"
        assert concurrency.run_queue_config.max_concurrent_runs == 20
        assert instance.get_settings("sensors")["use_threads"] is True
        assert type(instance.run_launcher).__name__ == "DefaultRunLauncher"
