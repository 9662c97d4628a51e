"""The current predictions a rollout is measured against, for rollout tests.

A rollout compares a candidate with the records' current predictions, so its tests first need
records in the feature store that each have one, made by a real model server: asked directly
(one predict call, no runs), and stored as current under the configuration that server reports.
``current_rows`` is what those tests compare before and after, to show that nothing but a
promote changes a current row.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from batchinfer_dagster import db, ledger
from batchinfer_dagster.clients.feature_store import LocalFeatureStore
from batchinfer_dagster.prediction import configuration_of
from batchinfer_dagster.receipts import UNKNOWN, ModelIdentity, text_digest
from batchinfer_dagster.records import add_records
from batchinfer_dagster.settings import Settings
from batchinfer_protocol.zero_shot import PredictParameters
from batchinfer_testing.deployment import TEXTS, engine_of, model_client_of, rows


@dataclass(frozen=True)
class CurrentPredictions:
    """Records with a current prediction each: their ids and texts (in id order) and the
    digest of the configuration the predictions are stored under."""

    ids: list[int]
    texts: list[str]
    configuration: str


def ticket_texts(count: int) -> list[str]:
    """``count`` distinct support-ticket texts (the benchmark's messages, numbered)."""
    return [f"{TEXTS[i % len(TEXTS)]} (ticket {i})" for i in range(count)]


def seed_current(settings: Settings, count: int) -> CurrentPredictions:
    """``count`` new records (``ticket_texts``), imported into the local feature store, each
    with a current prediction by the settings' model server."""
    engine = engine_of(settings)
    texts = ticket_texts(count)
    ids = add_records(engine, texts)
    LocalFeatureStore(engine).import_records()
    return predict_current(settings, ids, texts)


def stored_records(settings: Settings) -> tuple[list[int], list[str]]:
    """Every record's id and text, by id (records loaded by other means than ``seed_current``)."""
    records = rows(settings, db.data_points)
    ordered = sorted((r.id, r.text) for r in records)
    return [i for i, _ in ordered], [t for _, t in ordered]


def predict_current(
    settings: Settings, ids: Sequence[int], texts: Sequence[str]
) -> CurrentPredictions:
    """Ask the settings' model server for ``texts`` with the default parameters, in one call,
    and store the answers as the current predictions of ``ids`` (one ledger batch key "seed")."""
    client = model_client_of(settings)
    try:
        answer = client.predict(list(texts), PredictParameters())
    finally:
        client.close()
    current = configuration_of(
        PredictParameters(), ModelIdentity(answer.model, answer.model_digest or UNKNOWN)
    )
    with engine_of(settings).begin() as connection:
        ledger.write_predictions(
            connection,
            dict(zip(ids, answer.predictions, strict=True)),
            configuration=current,
            text_digests={i: text_digest(t) for i, t in zip(ids, texts, strict=True)},
            batch_key="seed",
            run_id="seed",
            now=db.utcnow(),
        )
    return CurrentPredictions(list(ids), list(texts), current.digest)


def current_rows(settings: Settings) -> list[tuple]:
    """Every current row as (record, configuration, labels, scores, updated_at), sorted."""
    table = db.predictions
    return sorted(
        (r.record_id, r.configuration, r.labels, r.scores, r.updated_at)
        for r in rows(settings, table, table.c.is_current.is_(True))
    )
