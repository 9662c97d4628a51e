"""A deleted record on the Vertex AI feature store: after the next import its request is
dead-lettered "unknown record id" by a run that finds no features, with no prediction asked
of the model (the local form of this is tests/reliability/test_deletions.py)."""

from __future__ import annotations

from pathlib import Path

from dagster import DagsterInstance
from google.cloud import bigquery

from batchinfer_dagster import db, ledger
from batchinfer_dagster.clients.vertex_feature_store import VertexFeatureStore
from batchinfer_dagster.defs.resources.vertex_feature_store import VertexFeatureStoreResource
from batchinfer_dagster.records import add_records, delete_record
from batchinfer_dagster.settings import Settings
from batchinfer_testing.daemon import execute_runs, sensor_tick
from batchinfer_testing.deployment import engine_of, publish_json, resources_of, rows
from batchinfer_testing.fakes.google import FakeBigQuery, FakeVertex
from batchinfer_testing.gcp_names import TABLE


def test_a_request_for_a_record_deleted_and_imported_is_dead_lettered_at_once(
    instance: DagsterInstance,
    vertex_settings: Settings,
    bigquery_client: bigquery.Client,
    fake_bigquery: FakeBigQuery,
    fake_vertex: FakeVertex,
    adc_key_file: Path,
) -> None:
    settings = vertex_settings.model_copy(update={"feature_wait_seconds": 600})
    engine = engine_of(settings)
    erased, kept = add_records(engine, ["erase me", "keep me"])
    resource = resources_of(settings)["feature_store"]
    assert isinstance(resource, VertexFeatureStoreResource)
    store = VertexFeatureStore(resource.view(), engine, bigquery_client=bigquery_client)
    store.import_records()
    delete_record(engine, erased)
    store.import_records()
    store.close()
    assert [row["entity_id"] for row in fake_bigquery.rows(TABLE)] == [str(kept)]
    publish_json(settings, [{"id": erased}])

    [run] = execute_runs(instance, settings, sensor_tick(instance, settings).run_requests)

    assert run.success
    assert str(erased) in fake_vertex.fetch_keys  # asked Vertex, which no longer has it
    assert fake_vertex.predict_sizes == []  # the model was never asked
    [request] = rows(settings, db.prediction_requests)
    assert request.status == ledger.RequestStatus.DEAD_LETTERED
    [letter] = rows(settings, db.dead_letters)
    assert (letter.record_id, letter.reason) == (erased, ledger.UNKNOWN_RECORD)
    assert rows(settings, db.predictions) == []
