"""Ledger rows brought into a chosen state through the product's own code paths.

Tests of the ledger's deadlines need a request in a given state at a given (injected) time. It
is made the way production makes it, through intake and a run of ``Predictor``, never written
into the tables by hand, so a change to how a state is reached is tested too.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from batchinfer_dagster import db, ledger
from batchinfer_dagster.clients.queue import ReceivedMessage
from batchinfer_dagster.prediction import Predictor
from batchinfer_dagster.settings import Settings
from batchinfer_testing.deployment import (
    engine_of,
    local_feature_store,
    model_client_of,
    resources_of,
    rows,
)

# A port nothing listens on: the model is never called for a record the store does not hold.
UNREACHABLE_MODEL_URL = "http://127.0.0.1:9"


def request_left_waiting(
    settings: Settings, *, at: datetime, feature_wait: timedelta, record_id: int = 42
) -> datetime:
    """One request for ``record_id`` (absent from the feature store), received at ``at`` and
    left waiting for its features by its run at ``at``; returns its ``not_before`` (when its
    next look-up is due).

    Raises ``AssertionError`` if the run did not leave it ``WAITING_FEATURES`` (the store held
    the record, or the settings' feature wait is zero).
    """
    engine = engine_of(settings)
    message = ReceivedMessage("1", "ack-1", f'{{"id": {record_id}}}'.encode(), 1, at)
    [batch_key] = ledger.ingest_messages(
        engine, [message], queue="local", batch_size=8, now=at
    ).batch_keys
    Predictor(
        engine=engine,
        feature_store=local_feature_store(settings),
        model=model_client_of(settings, url=UNREACHABLE_MODEL_URL),
        parameters=resources_of(settings)["model_server"].parameters(),
        feature_wait=feature_wait,
        clock=lambda: at,
    ).predict(batch_key, run_id="run-1")
    [request] = rows(settings, db.prediction_requests)
    assert request.status == ledger.RequestStatus.WAITING_FEATURES
    return request.not_before
