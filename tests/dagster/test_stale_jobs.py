"""The UI's side of staleness: the ``predictions_are_current`` check warns with the counts by
cause, and ``request_stale_predictions_job`` requests exactly the stale predictions, once."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import sqlalchemy as sa
from dagster import AssetCheckSeverity, DagsterInstance

from batchinfer_dagster import db, ledger
from batchinfer_dagster.definitions import build_definitions
from batchinfer_dagster.defs.partitions import PREDICTION_BATCHES
from batchinfer_dagster.prediction import configuration_of
from batchinfer_dagster.receipts import ModelIdentity, text_digest
from batchinfer_dagster.settings import Settings
from batchinfer_dagster.staleness import store_text_digests
from batchinfer_protocol.zero_shot import Prediction, PredictParameters
from batchinfer_testing.deployment import engine_of, resources_of, rows
from batchinfer_testing.model_server import EMBEDDING_MODEL

NOW = db.utcnow()
TEXTS = {1: "one", 2: "two", 3: "three"}


def seed(engine: sa.Engine, model_server_url: str) -> None:
    """Three predictions under the default parameters, by the model the test server serves
    (its name and the weights digest its /health reports)."""
    digest = httpx.get(f"{model_server_url}/health").json()["model_digest"]
    configuration = configuration_of(PredictParameters(), ModelIdentity(EMBEDDING_MODEL, digest))
    with engine.begin() as connection:
        store_text_digests(connection, TEXTS.items(), now=NOW)
        ledger.write_predictions(
            connection,
            {i: Prediction(t, ["billing", "mobile"], [0.6, 0.4]) for i, t in TEXTS.items()},
            configuration=configuration,
            text_digests={i: text_digest(t) for i, t in TEXTS.items()},
            batch_key="b",
            run_id="r",
            now=NOW,
        )


def test_the_check_warns_and_the_job_requests_each_stale_prediction_once(
    app_settings: Settings, model_server_url: str, instance: DagsterInstance, tmp_path: Path
) -> None:
    current = app_settings.model_copy(update={"model_url": model_server_url})
    seed(engine_of(current), model_server_url)
    defs = build_definitions(resources_of(current))
    check_job = defs.resolve_job_def("check_stale_predictions_job")

    (evaluation,) = check_job.execute_in_process(instance=instance).get_asset_check_evaluations()
    assert evaluation.passed
    assert evaluation.metadata["stale"].value == 0
    assert evaluation.metadata["model_checked"].value is True

    descriptions = tmp_path / "other.json"
    descriptions.write_text(json.dumps({"billing": ["Money: payments and refunds."]}))
    # A new Settings, not model_copy: a copy keeps the descriptions the first one cached.
    changed = Settings(
        home=current.home,
        database_url=current.resolved_database_url,
        model_url=model_server_url,
        label_descriptions_file=descriptions,
    )
    defs = build_definitions(resources_of(changed))
    check_job = defs.resolve_job_def("check_stale_predictions_job")
    (evaluation,) = check_job.execute_in_process(instance=instance).get_asset_check_evaluations()
    assert not evaluation.passed
    assert evaluation.severity == AssetCheckSeverity.WARN
    assert evaluation.metadata["stale"].value == 3
    assert evaluation.metadata["parameters"].value == 3

    request_job = defs.resolve_job_def("request_stale_predictions_job")
    assert request_job.execute_in_process(instance=instance).success
    requests = rows(changed, db.prediction_requests)
    assert sorted(r.record_id for r in requests) == [1, 2, 3]
    keys = {r.batch_key for r in requests}
    assert keys <= set(instance.get_dynamic_partitions(PREDICTION_BATCHES))
    assert request_job.execute_in_process(instance=instance).success  # nothing new
    assert len(rows(changed, db.prediction_requests)) == 3
