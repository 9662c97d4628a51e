"""The read side on SQLite and PostgreSQL: each query's rows, order, filters and limits."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import sqlalchemy as sa

from batchinfer_dagster import db, ledger, queries
from batchinfer_dagster.clients.queue import ReceivedMessage
from batchinfer_dagster.prediction import configuration_of
from batchinfer_dagster.receipts import ModelIdentity, text_digest
from batchinfer_dagster.records import add_records
from batchinfer_dagster.settings import Settings
from batchinfer_protocol.zero_shot import Prediction, PredictParameters
from batchinfer_testing.deployment import engine_of

NOW = datetime(2026, 12, 5, 9, 0, tzinfo=UTC)
OLD = configuration_of(PredictParameters(), ModelIdentity("org/old", "sha256:old"))
NEW = configuration_of(PredictParameters(), ModelIdentity("org/new", "sha256:new"))


def predict(
    engine: sa.Engine, record_ids: list[int], configuration: object, *, current: bool = True
) -> None:
    """A stored prediction of each record under ``configuration``: top label "a"."""
    answers = {i: Prediction(f"seen {i}", ["a", "b"], [0.75, 0.25]) for i in record_ids}
    with engine.begin() as connection:
        ledger.write_predictions(
            connection,
            answers,
            configuration=configuration,
            text_digests={i: text_digest(f"seen {i}") for i in record_ids},
            batch_key="b",
            run_id="r",
            now=NOW,
            current=current,
        )


def test_prediction_of_prefers_the_current_row_then_filters_by_model(
    app_settings: Settings,
) -> None:
    engine = engine_of(app_settings)
    [record] = add_records(engine, ["a text"])
    predict(engine, [record], OLD)
    predict(engine, [record], NEW, current=False)

    current = queries.prediction_of(engine, record)
    of_new = queries.prediction_of(engine, record, "org/new")

    assert current == queries.StoredPrediction(
        record_id=record,
        model="org/old",
        sequence=f"seen {record}",
        labels=["a", "b"],
        scores=[0.75, 0.25],
        text="a text",
    )
    assert of_new is not None
    assert of_new.model == "org/new"
    assert queries.prediction_of(engine, record, "org/other") is None
    assert queries.prediction_of(engine, record + 1) is None


def test_prediction_of_a_deleted_record_has_no_text(app_settings: Settings) -> None:
    engine = engine_of(app_settings)
    [record] = add_records(engine, ["gone soon"])
    predict(engine, [record], OLD)
    # Erasure (records.delete_record) removes predictions too; the outer join still answers
    # a prediction whose record row is gone another way, from the text the model saw.
    with engine.begin() as connection:
        connection.execute(db.data_points.delete().where(db.data_points.c.id == record))

    stored = queries.prediction_of(engine, record)

    assert stored is not None
    assert stored.text is None
    assert stored.sequence == f"seen {record}"


def test_missing_records_names_exactly_the_ids_without_a_record(app_settings: Settings) -> None:
    engine = engine_of(app_settings)
    first, second = add_records(engine, ["one", "two"])

    assert queries.missing_records(engine, [first, second, second + 1, second + 1]) == {second + 1}
    assert queries.missing_records(engine, []) == set()


def test_table_counts_count_each_table_and_status(app_settings: Settings) -> None:
    engine = engine_of(app_settings)
    ids = add_records(engine, ["one", "two", "three"])
    ledger.create_batches(engine, ids, source="test", batch_size=2, now=NOW)
    predict(engine, ids[:1], OLD)

    local = queries.table_counts(engine, local_queue=True)
    pubsub = queries.table_counts(engine, local_queue=False)

    assert (local.records, local.predictions) == (3, 1)
    assert local.requests == {"queued": 3}
    assert local.batches == {"queued": 2}
    assert (local.dead_letters_open, local.dead_letters_resolved) == (0, 0)
    assert local.queue_unacked == 0
    assert pubsub.queue_unacked is None


def test_current_prediction_record_ids_ascending_up_to_the_limit(app_settings: Settings) -> None:
    engine = engine_of(app_settings)
    ids = add_records(engine, ["one", "two", "three", "four"])
    predict(engine, [ids[2], ids[0], ids[1]], OLD)
    predict(engine, [ids[3]], NEW, current=False)

    assert queries.current_prediction_record_ids(engine) == ids[:3]
    assert queries.current_prediction_record_ids(engine, 2) == ids[:2]
    assert queries.current_prediction_record_ids(engine, 3) == ids[:3]
    assert queries.current_prediction_record_ids(engine, 4) == ids[:3]


def test_dead_letters_oldest_first_open_unless_all_and_limited(app_settings: Settings) -> None:
    engine = engine_of(app_settings)
    ledger.ingest_messages(
        engine,
        [
            ReceivedMessage(str(n), f"ack-{n}", b"not json", 1, NOW + timedelta(seconds=n))
            for n in range(3)
        ],
        queue="t",
        batch_size=8,
        now=NOW,
    )
    with engine.begin() as connection:
        first_id = connection.execute(sa.select(sa.func.min(db.dead_letters.c.id))).scalar_one()
        connection.execute(
            db.dead_letters.update()
            .where(db.dead_letters.c.id == first_id)
            .values(resolved_at=NOW, resolved_by_run="run-1")
        )

    open_letters = queries.dead_letters(engine, limit=10, include_resolved=False)
    every = queries.dead_letters(engine, limit=10, include_resolved=True)

    assert [letter.id for letter in open_letters] == [first_id + 1, first_id + 2]
    assert [letter.id for letter in every] == [first_id, first_id + 1, first_id + 2]
    assert [len(queries.dead_letters(engine, limit=n, include_resolved=True)) for n in (2, 3)] == [
        2,
        3,
    ]
    resolved = every[0].document()
    assert resolved["payload"] == "not json"
    assert resolved["resolved_by_run"] == "run-1"
    assert resolved["resolved_at"] == NOW.isoformat()
    assert resolved["replayed_at"] is None
    assert every[1].document()["resolved_at"] is None
