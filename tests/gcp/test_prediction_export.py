"""The ``bigquery_predictions`` asset against the BigQuery fake, through dagster-gcp's real
``BigQueryResource`` and the real google-cloud-bigquery client (``BIGQUERY_EMULATOR_HOST``
points it at the fake; the fake token endpoint issues its access token).

Predictions are written by the ledger's own ``write_predictions`` (what a run's settle calls).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from dagster import (
    AssetKey,
    AssetMaterialization,
    AssetSelection,
    Backoff,
    DagsterInstance,
    DefaultSensorStatus,
    Definitions,
    ExecuteInProcessResult,
    Jitter,
    evaluate_automation_conditions,
    materialize,
)

from batchinfer_dagster import db, ledger
from batchinfer_dagster.clients.bigquery_predictions import PREDICTIONS_SCHEMA
from batchinfer_dagster.definitions import build_definitions
from batchinfer_dagster.defs.deployments import resources_for
from batchinfer_dagster.defs.partitions import PREDICTION_BATCHES
from batchinfer_dagster.defs.prediction_export import WATERMARK, bigquery_predictions
from batchinfer_dagster.defs.resources.prediction_export import PredictionExportResource
from batchinfer_dagster.prediction import configuration_of
from batchinfer_dagster.receipts import Configuration, ModelIdentity, text_digest
from batchinfer_dagster.records import add_records, delete_record
from batchinfer_dagster.settings import Settings
from batchinfer_protocol.zero_shot import Prediction, PredictParameters
from batchinfer_testing.daemon import execute_runs, sensor_tick
from batchinfer_testing.deployment import engine_of, publish_json, resources_of
from batchinfer_testing.fakes.google import FakeBigQuery, FakeVertex
from batchinfer_testing.gcp_names import PROJECT

PREDICTIONS_TABLE = f"{PROJECT}.batchinfer_predictions.predictions"
KEY = AssetKey("bigquery_predictions")
T0 = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
MODEL = ModelIdentity("org/model", "sha256:one")
CURRENT = configuration_of(PredictParameters(), MODEL)
NEW = configuration_of(PredictParameters(hypothesis_template="About {}."), MODEL)


@pytest.fixture
def settings(
    vertex_settings: Settings,
    fake_bigquery: FakeBigQuery,
    _bigquery_service: tuple[FakeBigQuery, str],
    adc_key_file: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Settings:
    """Vertex settings with the export configured; the predictions table as Terraform makes it;
    every BigQuery client of the process pointed at the fake."""
    _, url = _bigquery_service
    monkeypatch.setenv("BIGQUERY_EMULATOR_HOST", url)
    fake_bigquery.create_table(PREDICTIONS_TABLE, [f.to_api_repr() for f in PREDICTIONS_SCHEMA])
    return vertex_settings.model_copy(update={"predictions_bigquery_table": PREDICTIONS_TABLE})


def write(
    connection: sa.Connection,
    answers: dict[int, tuple[str, float]],
    *,
    configuration: Configuration = CURRENT,
    now: datetime = T0,
) -> None:
    """Predictions of the given top label and score (the other label gets the rest), as a
    run's settle writes them, in ``connection``'s transaction."""
    predictions = {
        i: Prediction(f"t{i}", [top, "other"], [score, round(1 - score, 6)])
        for i, (top, score) in answers.items()
    }
    ledger.write_predictions(
        connection,
        predictions,
        configuration=configuration,
        text_digests={i: text_digest(f"t{i}") for i in answers},
        batch_key="b",
        run_id="r",
        now=now,
    )


def write_now(settings: Settings, answers: dict[int, tuple[str, float]], **kwargs: object) -> None:
    with engine_of(settings).begin() as connection:
        write(connection, answers, **kwargs)  # type: ignore[arg-type]


def export(
    settings: Settings, instance: DagsterInstance, *, full: bool = False
) -> ExecuteInProcessResult:
    resources = resources_of(settings)
    return materialize(
        [bigquery_predictions],
        instance=instance,
        resources={"prediction_export": resources["prediction_export"]},
        run_config={"ops": {"bigquery_predictions": {"config": {"full": full}}}},
        raise_on_error=False,
    )


def failure_message(result: ExecuteInProcessResult) -> str:
    """The failed step's error, its causes' messages included."""
    [failure] = [e for e in result.all_events if e.is_step_failure]
    error, messages = failure.step_failure_data.error, []
    while error is not None:
        messages.append(error.message)
        error = error.cause
    return "\n".join(messages)


def step_tries(result: ExecuteInProcessResult) -> int:
    """How many times the export's step started in the run (1 + its retries)."""
    return sum(1 for e in result.all_events if e.event_type_value == "STEP_START") + sum(
        1 for e in result.all_events if e.event_type_value == "STEP_RESTARTED"
    )


def metadata(result: ExecuteInProcessResult) -> dict[str, object]:
    [event] = result.get_asset_materialization_events()
    return {k: v.value for k, v in event.materialization.metadata.items()}


def watermark(instance: DagsterInstance) -> int | None:
    event = instance.get_latest_materialization_event(KEY)
    return None if event is None else event.asset_materialization.metadata[WATERMARK].value


def table(fake: FakeBigQuery) -> dict[tuple[int, str], dict[str, object]]:
    """The predictions table by (record_id, configuration); fails on a duplicated key."""
    rows = fake.rows(PREDICTIONS_TABLE)
    by_key = {(int(row["record_id"]), row["configuration"]): row for row in rows}
    assert len(by_key) == len(rows), f"duplicated keys in {rows}"
    return by_key


def test_the_first_export_sends_every_prediction_with_its_receipt(
    settings: Settings, instance: DagsterInstance, fake_bigquery: FakeBigQuery
) -> None:
    write_now(settings, {1: ("billing", 0.9), 2: ("mobile", 0.3)})

    result = export(settings, instance)

    assert result.success
    assert metadata(result)["rows_written"] == 2
    rows = table(fake_bigquery)
    assert rows[(1, CURRENT.digest)] == {
        "record_id": 1,
        "configuration": CURRENT.digest,
        "model": "org/model",
        "labels": ["billing", "other"],
        "scores": [0.9, 0.1],
        "top_label": "billing",
        "top_score": 0.9,
        "text_digest": text_digest("t1"),
        "predicted_at": T0.isoformat(),
        "is_current": True,
        "change_seq": rows[(1, CURRENT.digest)]["change_seq"],
    }
    # The top label is the highest score's, not the first label.
    assert (rows[(2, CURRENT.digest)]["top_label"], rows[(2, CURRENT.digest)]["top_score"]) == (
        "other",
        0.7,
    )
    # The staging table went after the merge.
    assert [t for t in fake_bigquery.deleted if "_staging." in t] != []
    assert not [t for t in fake_bigquery.tables if "_staging." in t]


def test_a_second_export_sends_only_what_was_written_since(
    settings: Settings, instance: DagsterInstance, fake_bigquery: FakeBigQuery
) -> None:
    write_now(settings, {1: ("billing", 0.9), 2: ("mobile", 0.8)})
    first = export(settings, instance)
    write_now(settings, {3: ("billing", 0.6)}, now=T0 + timedelta(minutes=1))

    second = export(settings, instance)
    third = export(settings, instance)

    assert metadata(first)["rows_written"] == 2
    assert metadata(second)["rows_written"] == 1
    assert metadata(second)["exported_since"] == metadata(first)[WATERMARK]
    assert metadata(third)["rows_written"] == 0
    assert metadata(third)[WATERMARK] == metadata(second)[WATERMARK]
    assert sorted(table(fake_bigquery)) == [(i, CURRENT.digest) for i in (1, 2, 3)]


def test_a_prediction_committed_late_with_an_older_time_is_still_exported(
    settings: Settings, instance: DagsterInstance, fake_bigquery: FakeBigQuery
) -> None:
    """A settle stamped T0 whose transaction commits after an export that already sent a
    prediction stamped an hour later: the next export sends it (a time watermark would have
    passed it by)."""
    write_now(settings, {1: ("billing", 0.9)}, now=T0 + timedelta(hours=1))
    engine = engine_of(settings)
    held = engine.connect()
    transaction = held.begin()
    write(held, {2: ("mobile", 0.8)}, now=T0)
    try:
        during = export(settings, instance)
    finally:
        transaction.commit()
        held.close()
    after = export(settings, instance)

    assert during.success
    assert after.success
    assert metadata(during)["rows_written"] == 1
    assert metadata(after)["rows_written"] == 1
    assert sorted(table(fake_bigquery)) == [(1, CURRENT.digest), (2, CURRENT.digest)]


def test_a_failed_merge_names_the_rows_and_keeps_the_watermark(
    settings: Settings, instance: DagsterInstance, fake_bigquery: FakeBigQuery
) -> None:
    write_now(settings, {1: ("billing", 0.9)})
    first = export(settings, instance)
    write_now(settings, {5: ("billing", 0.9), 7: ("mobile", 0.6)})
    fake_bigquery.refuse_prediction_merges = True

    failed = export(settings, instance)

    assert not failed.success
    message = failure_message(failed)
    assert "2 written and 0 deleted prediction rows (records 5…7" in message
    assert "bigquery.tables.updateData denied" in message
    assert watermark(instance) == metadata(first)[WATERMARK]
    assert not [t for t in fake_bigquery.tables if "_staging." in t]  # dropped anyway
    fake_bigquery.refuse_prediction_merges = False
    again = export(settings, instance)
    assert metadata(again)["rows_written"] == 2
    assert sorted(table(fake_bigquery)) == [(i, CURRENT.digest) for i in (1, 5, 7)]


def test_a_refused_merge_fails_at_once_naming_the_table_and_the_permission(
    settings: Settings, instance: DagsterInstance, fake_bigquery: FakeBigQuery
) -> None:
    write_now(settings, {1: ("billing", 0.9)})
    fake_bigquery.refuse_prediction_merges = True

    failed = export(settings, instance)

    assert not failed.success
    assert step_tries(failed) == 1
    message = failure_message(failed)
    assert (
        f"needs bigquery.tables.getData and bigquery.tables.updateData on table "
        f"{PREDICTIONS_TABLE}" in message
    )
    assert sum(query.startswith("MERGE") for query in fake_bigquery.queries) == 1


def test_a_job_bigquery_failed_on_its_side_is_tried_again_in_the_same_run(
    settings: Settings, instance: DagsterInstance, fake_bigquery: FakeBigQuery
) -> None:
    """A load job that ended with backendError (the client does not run a failed load job
    again): the retry policy's second try exports, and the run succeeds."""
    write_now(settings, {1: ("billing", 0.9), 2: ("mobile", 0.8)})
    fake_bigquery.failing_loads = 1

    result = export(settings, instance)

    assert result.success
    assert step_tries(result) == 2
    assert metadata(result)["rows_written"] == 2
    assert sorted(table(fake_bigquery)) == [(1, CURRENT.digest), (2, CURRENT.digest)]
    assert fake_bigquery.failing_loads == 0


def test_the_export_is_tried_three_times_with_exponential_backoff_and_jitter() -> None:
    policy = bigquery_predictions.op.retry_policy

    assert policy is not None
    assert policy.max_retries + 1 == 3
    assert (policy.backoff, policy.jitter) == (Backoff.EXPONENTIAL, Jitter.FULL)


def test_an_export_whose_staging_table_stays_is_sent_again_without_duplicates(
    settings: Settings, instance: DagsterInstance, fake_bigquery: FakeBigQuery
) -> None:
    """The MERGE went through but deleting the staging table was refused: the export fails
    (the watermark stays), and the next one sends the same rows, which change nothing."""
    write_now(settings, {1: ("billing", 0.9), 2: ("mobile", 0.8)})
    fake_bigquery.refuse_deletes = True

    failed = export(settings, instance)

    assert not failed.success
    assert "deleting staging table" in failure_message(failed)
    assert watermark(instance) is None
    merged = table(fake_bigquery)
    assert sorted(merged) == [(1, CURRENT.digest), (2, CURRENT.digest)]
    fake_bigquery.refuse_deletes = False
    again = export(settings, instance)
    assert metadata(again)["rows_written"] == 2
    assert table(fake_bigquery) == merged


def test_a_re_run_of_everything_duplicates_nothing(
    settings: Settings, instance: DagsterInstance, fake_bigquery: FakeBigQuery
) -> None:
    write_now(settings, {1: ("billing", 0.9), 2: ("mobile", 0.8)})
    export(settings, instance)
    before = table(fake_bigquery)

    again = export(settings, instance, full=True)

    assert metadata(again)["rows_written"] == 2
    assert table(fake_bigquery) == before


def test_a_new_configuration_adds_a_row_and_the_old_one_stops_being_current(
    settings: Settings, instance: DagsterInstance, fake_bigquery: FakeBigQuery
) -> None:
    write_now(settings, {1: ("billing", 0.9), 2: ("mobile", 0.8)})
    export(settings, instance)
    write_now(settings, {1: ("mobile", 0.7)}, configuration=NEW)
    # The same configuration predicted again (a re-run): its row is replaced, not added.
    write_now(settings, {2: ("billing", 0.55)})

    result = export(settings, instance)

    # Record 1's old row (now not current), its new row, record 2's row again.
    assert metadata(result)["rows_written"] == 3
    rows = table(fake_bigquery)
    assert sorted(rows) == sorted([(1, CURRENT.digest), (1, NEW.digest), (2, CURRENT.digest)])
    assert (rows[(1, CURRENT.digest)]["is_current"], rows[(1, CURRENT.digest)]["top_label"]) == (
        False,
        "billing",
    )
    assert (rows[(1, NEW.digest)]["is_current"], rows[(1, NEW.digest)]["top_label"]) == (
        True,
        "mobile",
    )
    assert rows[(2, CURRENT.digest)]["top_label"] == "billing"


def test_an_erased_record_leaves_the_table_on_the_next_export(
    settings: Settings, instance: DagsterInstance, fake_bigquery: FakeBigQuery
) -> None:
    erased, kept = add_records(engine_of(settings), ["erase me", "keep me"])
    write_now(settings, {erased: ("billing", 0.9), kept: ("mobile", 0.8)})
    export(settings, instance)
    delete_record(engine_of(settings), erased)

    result = export(settings, instance)

    assert (metadata(result)["rows_written"], metadata(result)["rows_deleted"]) == (0, 1)
    assert sorted(table(fake_bigquery)) == [(kept, CURRENT.digest)]


def test_a_malformed_row_is_named_and_the_watermark_stays(
    settings: Settings, instance: DagsterInstance, fake_bigquery: FakeBigQuery
) -> None:
    write_now(settings, {1: ("billing", 0.9), 2: ("mobile", 0.8)})
    with engine_of(settings).begin() as connection:
        connection.execute(
            sa.update(db.predictions).where(db.predictions.c.record_id == 2).values(scores=[1.0])
        )

    failed = export(settings, instance)

    assert not failed.success
    assert step_tries(failed) == 1  # a bad row stays bad: not tried again
    message = failure_message(failed)
    assert f"record 2 under configuration {CURRENT.digest}" in message
    assert "2 labels but 1 scores" in message
    assert watermark(instance) is None
    assert fake_bigquery.rows(PREDICTIONS_TABLE) == []


def test_a_real_run_s_predictions_are_exported(
    settings: Settings,
    instance: DagsterInstance,
    fake_bigquery: FakeBigQuery,
    fake_vertex: FakeVertex,
) -> None:
    """The whole path on the Google fakes: records imported into BigQuery and synced, a
    request published, the sensor's run predicts on the Vertex endpoint fake and settles, then
    the export sends exactly that run's predictions."""
    ids = add_records(engine_of(settings), ["my card was charged twice", "the app crashes"])
    with resources_of(settings)["feature_store"].open() as store:
        store.import_records()
    publish_json(settings, [{"id": i} for i in ids])
    [run] = execute_runs(instance, settings, sensor_tick(instance, settings).run_requests)
    assert run.success

    result = export(settings, instance)

    assert metadata(result)["rows_written"] == 2
    rows = table(fake_bigquery)
    assert sorted(record for record, _ in rows) == ids
    assert all(row["is_current"] and row["model"] for row in rows.values())
    assert fake_vertex.predict_sizes != []


def test_only_a_deployment_with_a_table_gets_the_export(tmp_path: Path) -> None:
    local = build_definitions(resources_for(Settings(home=tmp_path)).as_dict())
    google = build_definitions(
        resources_for(
            Settings(home=tmp_path, predictions_bigquery_table=PREDICTIONS_TABLE)
        ).as_dict()
    )

    Definitions.validate_loadable(google)
    assert KEY not in local.resolve_asset_graph().get_all_asset_keys()
    assert "prediction_export" not in local.resources
    assert "bigquery_predictions_sensor" not in {s.name for s in local.sensors}
    graph = google.resolve_asset_graph()
    assert graph.get(KEY).parent_keys == {AssetKey("predictions")}
    sensor = google.resolve_sensor_def("bigquery_predictions_sensor")
    assert sensor.default_status == DefaultSensorStatus.RUNNING
    resource = google.resources["prediction_export"]
    assert isinstance(resource, PredictionExportResource)
    assert (resource.table, resource.bigquery.project) == (PREDICTIONS_TABLE, PROJECT)


def test_an_export_is_requested_once_per_new_predictions(
    tmp_path: Path, instance: DagsterInstance
) -> None:
    """The automation condition: nothing while idle, one request after a partition of
    ``predictions`` materializes (even with other partitions never materialized, which
    ``eager()`` would wait for), none again until the next one."""
    defs = build_definitions(
        resources_for(
            Settings(home=tmp_path, predictions_bigquery_table=PREDICTIONS_TABLE)
        ).as_dict()
    )
    only = AssetSelection.keys(KEY)

    def tick(cursor: object) -> tuple[int, object]:
        result = evaluate_automation_conditions(
            defs=defs, instance=instance, asset_selection=only, cursor=cursor
        )
        return result.get_num_requested(KEY), result.cursor

    idle, cursor = tick(None)
    instance.add_dynamic_partitions(PREDICTION_BATCHES, ["b1", "b2", "b3"])
    instance.report_runless_asset_event(AssetMaterialization("predictions", partition="b1"))
    after_b1, cursor = tick(cursor)
    again, cursor = tick(cursor)
    instance.report_runless_asset_event(AssetMaterialization("predictions", partition="b2"))
    after_b2, cursor = tick(cursor)

    assert (idle, after_b1, again, after_b2) == (0, 1, 0, 1)
