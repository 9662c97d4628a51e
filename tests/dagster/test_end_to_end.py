"""End to end: records → feature store → queue → sensor → runs on the real model server.

A mixed backlog (duplicates, unknown ids, malformed messages) must end as exactly one prediction
per known record, and everything else as a dead letter with its reason.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
import yaml
from dagster import AssetKey, DagsterInstance, RunRequest, materialize

from batchinfer_dagster import db, ledger
from batchinfer_dagster.definitions import build_definitions
from batchinfer_dagster.defs.assets import data_points, features
from batchinfer_dagster.defs.checks import PREDICTION_CHECK_SPECS
from batchinfer_dagster.defs.partitions import PREDICTION_BATCHES
from batchinfer_dagster.settings import Settings
from batchinfer_testing.daemon import execute_runs, run_daemon_loop
from batchinfer_testing.deployment import (
    TEXTS,
    engine_of,
    open_queue,
    pubsub_settings,
    resources_of,
    rows,
    unique_name,
)
from batchinfer_testing.model_server import EMBEDDING_MODEL, REPO_ROOT
from batchinfer_testing.services import PostgresServer, PubSubEmulator

MALFORMED = [b"{not json", b'{"id": "twelve"}', b'{"record": 4}', b'["1"]', b'{"id": -5}']


def load_records(instance: DagsterInstance, settings: Settings, count: int) -> dict[int, str]:
    """Write ``count`` records and import them by materializing the two upstream assets."""
    texts = [f"{TEXTS[i % len(TEXTS)]} (ticket {i})" for i in range(count)]
    with engine_of(settings).begin() as connection:
        ids = connection.execute(
            db.data_points.insert().returning(db.data_points.c.id),
            [{"text": text, "created_at": db.utcnow()} for text in texts],
        ).scalars()
        records = dict(zip(ids, texts, strict=True))
    result = materialize(
        [data_points, features], instance=instance, resources=resources_of(settings)
    )
    assert result.success
    imported = result.asset_materializations_for_node("features")[0].metadata
    assert imported["rows_imported"].value == count
    return records


def publish_mixed_backlog(
    settings: Settings, records: dict[int, str], *, duplicates: int, unknown: int, malformed: int
) -> int:
    rng = random.Random(5)
    known = list(records)
    bodies = [json.dumps({"id": str(i)}).encode() for i in known]
    bodies += [json.dumps({"id": rng.choice(known)}).encode() for _ in range(duplicates)]
    bodies += [json.dumps({"id": str(10_000_000 + i)}).encode() for i in range(unknown)]
    bodies += [MALFORMED[i % len(MALFORMED)] for i in range(malformed)]
    rng.shuffle(bodies)
    queue = open_queue(settings)
    try:
        queue.publish(bodies)
    finally:
        queue.close()
    return len(bodies)


def replaced_system_document(record_id: int, row: sa.Row) -> dict:
    """The BigQuery row of the system this one replaces:
    ``{"data", "prediction": {"sequence", "labels", "scores"}}``."""
    return {
        "data": {"id": str(record_id), "text": row.sequence},
        "prediction": {"sequence": row.sequence, "labels": row.labels, "scores": row.scores},
    }


def assert_one_prediction_per_known_record(settings: Settings, records: dict[int, str]) -> None:
    predictions = rows(settings, db.predictions)
    assert sorted(p.record_id for p in predictions) == sorted(records)
    for row in predictions:
        document = json.loads(json.dumps(replaced_system_document(row.record_id, row)))
        prediction = document["prediction"]
        assert prediction["sequence"] == records[row.record_id]
        assert sorted(prediction["labels"]) == sorted(settings.labels)
        assert prediction["scores"] == sorted(prediction["scores"], reverse=True)
        assert abs(sum(prediction["scores"]) - 1) < 1e-4
        assert row.model == EMBEDDING_MODEL  # the lineage key is the model the server reports


def run_backlog(
    instance: DagsterInstance,
    settings: Settings,
    *,
    records: int,
    duplicates: int,
    unknown: int,
    malformed: int,
) -> None:
    known = load_records(instance, settings, records)
    published = publish_mixed_backlog(
        settings, known, duplicates=duplicates, unknown=unknown, malformed=malformed
    )
    assert published == records + duplicates + unknown + malformed

    # Pub/Sub answers a pull with some of what is outstanding: tick until every valid request
    # (malformed ones never enter the ledger) is settled, not until the first empty pull.
    report = run_daemon_loop(instance, settings, expect=records + duplicates + unknown)

    assert report.runs
    assert all(run.success for run in report.runs)
    evaluations = [e for run in report.runs for e in run.get_asset_check_evaluations()]
    # Every check the materialization declares, once per run.
    assert len(evaluations) == len(PREDICTION_CHECK_SPECS) * len(report.runs)
    assert all(e.passed for e in evaluations)
    assert_one_prediction_per_known_record(settings, known)

    letters = rows(settings, db.dead_letters)
    reasons = Counter(letter.reason for letter in letters)
    assert reasons[ledger.UNKNOWN_RECORD] == unknown
    assert len(letters) == unknown + malformed
    assert all(letter.reason for letter in letters)
    requests = rows(settings, db.prediction_requests)
    assert len(requests) == records + duplicates + unknown
    assert Counter(r.status for r in requests) == {
        ledger.RequestStatus.DONE: records + duplicates,
        ledger.RequestStatus.DEAD_LETTERED: unknown,
    }
    partitions = set(instance.get_dynamic_partitions(PREDICTION_BATCHES))
    assert {p.batch_key for p in rows(settings, db.predictions)} <= partitions


def test_mixed_backlog_of_1000_requests(
    instance: DagsterInstance, app_settings: Settings, model_server_url: str
) -> None:
    """On SQLite and PostgreSQL, local queue, default batch size."""
    settings = app_settings.model_copy(
        update={
            "model_url": model_server_url,
            "pull_timeout_seconds": 0.3,
            "feature_wait_seconds": 0,
        }
    )
    run_backlog(instance, settings, records=700, duplicates=150, unknown=100, malformed=50)


def test_mixed_backlog_through_the_pubsub_emulator(
    instance: DagsterInstance, emulator: PubSubEmulator, tmp_path: Path, model_server_url: str
) -> None:
    """The same through Pub/Sub, smaller: its redelivery paths are covered by the sensor tests."""
    base = Settings(
        home=tmp_path,
        database_url=f"sqlite:///{tmp_path / 'app.db'}",
        model_url=model_server_url,
        batch_size=128,
        pull_timeout_seconds=0.3,
        feature_wait_seconds=0,
    )
    settings = pubsub_settings(base, emulator)
    try:
        run_backlog(instance, settings, records=200, duplicates=40, unknown=40, malformed=20)
    finally:
        db.dispose_engines()


@pytest.fixture
def postgres_instance(
    postgres: PostgresServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[DagsterInstance]:
    """A Dagster instance from the production dagster.yaml, on the test PostgreSQL server.

    Only what needs Google Cloud or TLS is taken out: the GCS compute-log bucket, the Cloud Run
    run launcher (the test executes the runs itself; tests/gcp/test_cloud_run_launcher.py covers
    it) and ``sslmode=verify-ca`` (the test server has no certificate). Storage, run queue, pool
    limits, retries and sensor settings are the production file's own.
    """
    name = unique_name("dagster")
    postgres.create_database(name)
    config = yaml.safe_load((REPO_ROOT / "deploy" / "dagster.yaml").read_text())
    config.pop("compute_logs")
    config.pop("run_launcher")
    config["storage"]["postgres"]["postgres_db"].pop("params")
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(yaml.safe_dump(config))
    for variable, value in {
        "DAGSTER_PG_HOST": "127.0.0.1",
        "DAGSTER_PG_PORT": str(postgres.port),
        "DAGSTER_PG_USER": "postgres",
        "DAGSTER_PG_PASSWORD": "",
        "DAGSTER_PG_DB": name,
    }.items():
        monkeypatch.setenv(variable, value)
    with DagsterInstance.from_config(str(home)) as instance:
        assert instance.run_coordinator.__class__.__name__ == "QueuedRunCoordinator"
        yield instance


def test_backlog_on_dagster_postgres_storage(
    postgres_instance: DagsterInstance, postgres_url: str, tmp_path: Path, model_server_url: str
) -> None:
    settings = Settings(
        home=tmp_path,
        database_url=postgres_url,
        model_url=model_server_url,
        batch_size=64,
        pull_timeout_seconds=0.3,
        feature_wait_seconds=0.0,
    )
    try:
        run_backlog(
            postgres_instance, settings, records=150, duplicates=20, unknown=10, malformed=5
        )
    finally:
        db.dispose_engines()


def test_request_predictions_job_and_rematerialization(
    instance: DagsterInstance, app_settings: Settings, model_server_url: str
) -> None:
    pipeline_settings = app_settings.model_copy(update={"model_url": model_server_url})
    known = load_records(instance, pipeline_settings, 5)
    ids = sorted(known)
    defs = build_definitions(resources_of(pipeline_settings))

    result = defs.resolve_job_def("request_predictions_job").execute_in_process(
        run_config={"ops": {"request_predictions": {"config": {"record_ids": [*ids[:3], ids[0]]}}}},
        instance=instance,
    )

    assert result.success
    (batch_key,) = instance.get_dynamic_partitions(PREDICTION_BATCHES)
    # The sensor launches the batch's run: a real materialization of the partition, with checks.
    report = run_daemon_loop(instance, pipeline_settings)
    (run,) = report.runs
    assert run.success
    assert {e.check_name for e in run.get_asset_check_evaluations() if e.passed} == {
        "one_prediction_per_record",
        "scores_sum_to_one",
        "labels_are_the_configured_labels",
        "records_predicted",
    }
    materialized = instance.get_latest_materialization_event(AssetKey("predictions"))
    assert materialized is not None
    assert materialized.asset_materialization.partition == batch_key
    first = {p.record_id: p for p in rows(pipeline_settings, db.predictions)}
    assert sorted(first) == ids[:3]

    # Re-materializing the partition from the UI recomputes the batch in place.
    (rerun,) = execute_runs(instance, pipeline_settings, [RunRequest(partition_key=batch_key)])
    assert rerun.success
    second = {p.record_id: p for p in rows(pipeline_settings, db.predictions)}
    assert sorted(second) == ids[:3]
    assert {p.run_id for p in second.values()} == {rerun.run_id}
    assert all(second[i].scores == pytest.approx(first[i].scores, abs=1e-5) for i in second)
