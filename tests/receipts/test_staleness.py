"""Staleness by cause, from stored digests, on SQLite and PostgreSQL (no model server)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import sqlalchemy as sa

from batchinfer_dagster import db, ledger
from batchinfer_dagster.prediction import configuration_of, parameters_of
from batchinfer_dagster.receipts import UNKNOWN, ModelIdentity, text_digest
from batchinfer_dagster.settings import Settings
from batchinfer_dagster.staleness import (
    Deployment,
    iter_stale,
    record_requested,
    stale_causes,
    stale_counts,
    store_text_digests,
)
from batchinfer_protocol.zero_shot import Prediction, PredictParameters
from batchinfer_testing.deployment import engine_of, rows

NOW = datetime(2026, 12, 5, 9, 0, tzinfo=UTC)
MODEL = ModelIdentity("org/model", "sha256:one")
A = PredictParameters()
B = PredictParameters(label_descriptions={"billing": ("Money.",)})
TEXTS = {1: "one", 2: "two", 3: "three"}


def answer(text: str) -> Prediction:
    return Prediction(text, ["billing", "mobile"], [0.6, 0.4])


def predict(engine: sa.Engine, parameters: PredictParameters, texts: dict[int, str]) -> None:
    with engine.begin() as connection:
        ledger.write_predictions(
            connection,
            {i: answer(t) for i, t in texts.items()},
            configuration=configuration_of(parameters, MODEL),
            text_digests={i: text_digest(t) for i, t in texts.items()},
            batch_key="b",
            run_id=f"run-{len(texts)}",
            now=NOW,
        )


def imported(engine: sa.Engine, texts: dict[int, str]) -> None:
    with engine.begin() as connection:
        store_text_digests(connection, texts.items(), now=NOW)


def counts(engine: sa.Engine, deployment: Deployment) -> dict[str, int]:
    found = stale_counts(engine, deployment)
    return {key: value for key, value in found.items() if value}


@pytest.fixture
def engine(app_settings: Settings) -> sa.Engine:
    engine = engine_of(app_settings)
    imported(engine, TEXTS)
    predict(engine, A, TEXTS)
    return engine


def test_nothing_is_stale_under_the_configuration_that_made_it(engine: sa.Engine) -> None:
    assert counts(engine, Deployment(parameters_of(A), MODEL)) == {"current": 3}
    assert counts(engine, Deployment(parameters_of(A))) == {"current": 3}  # model not asked


def test_an_imported_edit_makes_only_its_record_stale_by_text(engine: sa.Engine) -> None:
    imported(engine, {2: "two, edited"})
    deployment = Deployment(parameters_of(A), MODEL)
    assert counts(engine, deployment) == {"current": 3, "stale": 1, "text": 1}
    assert stale_causes(engine, deployment, 2) == ["text"]
    assert stale_causes(engine, deployment, 1) == []
    assert [s.record_id for page in iter_stale(engine, deployment) for s in page] == [2]


def test_other_parameters_or_weights_make_every_prediction_stale(engine: sa.Engine) -> None:
    assert counts(engine, Deployment(parameters_of(B), MODEL)) == {
        "current": 3,
        "stale": 3,
        "parameters": 3,
    }
    other_weights = ModelIdentity(MODEL.name, "sha256:two")
    assert counts(engine, Deployment(parameters_of(A), other_weights)) == {
        "current": 3,
        "stale": 3,
        "model": 3,
    }
    unreported = ModelIdentity(MODEL.name, UNKNOWN)
    assert counts(engine, Deployment(parameters_of(A), unreported))["model"] == 3


def test_a_new_configuration_adds_rows_and_moves_the_current_one(
    engine: sa.Engine, app_settings: Settings
) -> None:
    predict(engine, B, {1: "one"})
    stored = rows(app_settings, db.predictions, db.predictions.c.record_id == 1)
    assert len(stored) == 2
    assert sorted(row.is_current for row in stored) == [False, True]
    (current,) = [row for row in stored if row.is_current]
    assert current.configuration == configuration_of(B, MODEL).digest
    assert counts(engine, Deployment(parameters_of(B), MODEL)) == {
        "current": 3,
        "stale": 2,
        "parameters": 2,
    }
    predict(engine, A, {1: "one"})  # back to A: the A row is current again, none added
    assert len(rows(app_settings, db.predictions, db.predictions.c.record_id == 1)) == 2
    assert counts(engine, Deployment(parameters_of(A), MODEL)) == {"current": 3}


def test_a_stale_prediction_is_requested_once_until_it_is_replaced(engine: sa.Engine) -> None:
    imported(engine, {2: "two, edited", 3: "three, edited"})
    deployment = Deployment(parameters_of(A), MODEL)
    (page,) = list(iter_stale(engine, deployment, unrequested_only=True))
    assert [s.record_id for s in page] == [2, 3]
    record_requested(engine, page[:1], now=NOW)
    (left,) = list(iter_stale(engine, deployment, unrequested_only=True))
    assert [s.record_id for s in left] == [3]
    predict(engine, A, {2: "two, edited"})  # the replacement lands
    imported(engine, {2: "two, edited twice"})  # and a new edit makes it stale again
    (again,) = list(iter_stale(engine, deployment, unrequested_only=True))
    assert [s.record_id for s in again] == [2, 3]


def test_legacy_predictions_count_as_unknown_receipts(
    engine: sa.Engine, app_settings: Settings
) -> None:
    with engine.begin() as connection:
        connection.execute(
            sa.update(db.predictions)
            .where(db.predictions.c.record_id == 3)
            .values(text_digest=None)
        )
    deployment = Deployment(parameters_of(A), MODEL)
    assert counts(engine, deployment) == {"current": 3, "stale": 1, "unknown_receipt": 1}
