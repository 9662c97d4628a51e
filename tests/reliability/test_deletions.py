"""Fault 15: deleted records stayed in the feature store and kept being predicted.

``batchinfer delete-data-point`` deletes a record and its predictions; the database leaves a
tombstone, the next import removes the feature, ``--full`` keeps exactly the current records,
``status`` counts agree, and a request for a deleted record is dead-lettered "unknown record id"
at once, also when the run fetched its text before the deletion. Both app databases.
"""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from click.testing import CliRunner, Result
from dagster import DagsterInstance

from batchinfer_dagster import db, ledger
from batchinfer_dagster.cli import cli
from batchinfer_dagster.prediction import configuration_of
from batchinfer_dagster.receipts import ModelIdentity, text_digest
from batchinfer_dagster.records import add_records
from batchinfer_dagster.settings import Settings
from batchinfer_protocol.zero_shot import Prediction, PredictParameters
from batchinfer_testing.daemon import execute_runs, sensor_tick
from batchinfer_testing.deployment import engine_of, local_feature_store, publish_json, rows
from batchinfer_testing.processes import free_port


@pytest.fixture
def settings(app_settings: Settings) -> Settings:
    """No model server (a request for a deleted record must never need one), 600 s wait."""
    return app_settings.model_copy(
        update={"model_url": f"http://127.0.0.1:{free_port()}", "feature_wait_seconds": 600}
    )


def batchinfer(settings: Settings, *args: str) -> Result:
    env = {
        "BATCHINFER_HOME": str(settings.home),
        "BATCHINFER_DATABASE_URL": settings.resolved_database_url,
        "BATCHINFER_QUEUE": settings.queue,
    }
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


def documents(result: Result) -> list[dict]:
    return [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]


def stored_features(settings: Settings) -> dict[int, str]:
    return dict(local_feature_store(settings).list_records(1000)[0])


def test_a_deleted_record_leaves_the_feature_store_and_status_counts_agree(
    settings: Settings,
) -> None:
    ids = add_records(engine_of(settings), ["keep me", "erase me", "keep me too"])
    assert batchinfer(settings, "import-data").exit_code == 0

    deleted = batchinfer(settings, "delete-data-point", str(ids[1]))

    assert deleted.exit_code == 0, deleted.output
    assert documents(deleted) == [{"deleted": ids[1], "predictions_deleted": 0}]
    imported = batchinfer(settings, "import-data")
    [summary, *_] = documents(imported)
    assert (summary["imported"], summary["rows_deleted"]) == (0, 1)
    assert stored_features(settings) == {ids[0]: "keep me", ids[2]: "keep me too"}
    status = json.loads(batchinfer(settings, "status").stdout)
    assert status["records"] == status["features"] == 2

    again = batchinfer(settings, "delete-data-point", str(ids[1]))
    assert again.exit_code == 1
    assert f"there is no record {ids[1]}" in again.output
    assert batchinfer(settings, "delete-data-point", "0").exit_code == 1


def test_full_import_rebuilds_exactly_the_current_records(settings: Settings) -> None:
    ids = add_records(engine_of(settings), ["a", "b"])
    batchinfer(settings, "import-data")
    # A feature with no record (written straight into the store, or from before tombstones).
    local_feature_store(settings).upsert([(ids[1] + 100, "no such record")])
    batchinfer(settings, "delete-data-point", str(ids[0]))

    rebuilt = batchinfer(settings, "import-data", "--full")

    assert rebuilt.exit_code == 0, rebuilt.output
    assert stored_features(settings) == {ids[1]: "b"}
    status = json.loads(batchinfer(settings, "status").stdout)
    assert status["records"] == status["features"] == 1


def test_a_request_for_a_deleted_record_is_dead_lettered_at_once(
    instance: DagsterInstance, settings: Settings
) -> None:
    """Deleted and imported: the run finds no features; the request does not wait out the
    600 s feature wait for a record that can never arrive."""
    [record_id] = add_records(engine_of(settings), ["erase me"])
    batchinfer(settings, "import-data")
    batchinfer(settings, "delete-data-point", str(record_id))
    batchinfer(settings, "import-data")
    publish_json(settings, [{"id": record_id}])

    [run] = execute_runs(instance, settings, sensor_tick(instance, settings).run_requests)

    assert run.success
    [request] = rows(settings, db.prediction_requests)
    assert request.status == ledger.RequestStatus.DEAD_LETTERED
    [letter] = rows(settings, db.dead_letters)
    assert (letter.record_id, letter.reason) == (record_id, ledger.UNKNOWN_RECORD)
    assert rows(settings, db.predictions) == []


def test_a_record_deleted_while_its_run_predicted_it_gets_no_prediction(
    settings: Settings,
) -> None:
    """The run fetched the text and the model answered; the record was deleted before the
    run settled: no prediction row holds its text, its request is a dead letter, and the other
    record of the batch is predicted."""
    engine = engine_of(settings)
    erased, kept = add_records(engine, ["erase me", "keep me"])
    [batch_key] = ledger.create_batches(
        engine, [erased, kept], source="test", batch_size=8, now=db.utcnow()
    )
    requests = ledger.start_batch(engine, batch_key, run_id="run-1", now=db.utcnow())
    batchinfer(settings, "delete-data-point", str(erased))
    answer = Prediction(sequence="text", labels=["billing"], scores=[1.0])

    waiting, dead = ledger.settle_batch(
        engine,
        ledger.Settlement(
            batch_key=batch_key,
            run_id="run-1",
            requests=requests,
            configuration=configuration_of(
                PredictParameters(), ModelIdentity("test-model", "sha256:test")
            ),
            answers={erased: answer, kept: answer},
            text_digests={erased: text_digest(answer.sequence), kept: text_digest(answer.sequence)},
            feature_wait=timedelta(seconds=settings.feature_wait_seconds),
            now=db.utcnow(),
        ),
    )

    assert (waiting, dead) == (0, 1)
    assert [row.record_id for row in rows(settings, db.predictions)] == [kept]
    [letter] = rows(settings, db.dead_letters)
    assert (letter.record_id, letter.reason) == (erased, ledger.UNKNOWN_RECORD)
