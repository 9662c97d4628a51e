"""The feature wait expires exactly at its deadline: an injected clock just before, at, and after.

A request for a record the feature store does not hold waits (with backoff) until
``received_at + BATCHINFER_FEATURE_WAIT_SECONDS``; from that instant on it is a dead letter
``unknown record id``. The wait is credited gap by gap as the ledger observes it (each look-up
due on time), so the clock here moves as the sensor's would: the run finds the record missing at
receipt, and each look-up comes when its backoff ends. The model is never called for it, so no
server is needed.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

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

RECEIVED = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
WAIT = timedelta(seconds=600)
TICK = timedelta(microseconds=1)


@pytest.mark.parametrize(
    ("last", "status"),
    [
        (RECEIVED + WAIT - TICK, ledger.RequestStatus.WAITING_FEATURES),
        (RECEIVED + WAIT, ledger.RequestStatus.DEAD_LETTERED),
        (RECEIVED + WAIT + TICK, ledger.RequestStatus.DEAD_LETTERED),
    ],
    ids=["just-before", "at-the-deadline", "just-after"],
)
def test_feature_wait_expires_at_its_deadline(
    app_settings: Settings, last: datetime, status: str
) -> None:
    engine = engine_of(app_settings)
    message = ReceivedMessage("1", "ack-1", b'{"id": 42}', 1, RECEIVED)
    [batch_key] = ledger.ingest_messages(
        engine, [message], queue="local", batch_size=8, now=RECEIVED
    ).batch_keys
    # Never called: record 42 has no features.
    client = model_client_of(app_settings, url="http://127.0.0.1:9")

    predictor = Predictor(
        engine=engine,
        feature_store=local_feature_store(app_settings),
        model=client,
        parameters=resources_of(app_settings)["model_server"].parameters(),
        feature_wait=WAIT,
        clock=lambda: RECEIVED,
    )
    outcome = predictor.predict(batch_key, run_id="run-1")
    assert (outcome.waiting, outcome.dead_lettered) == (1, 0)

    def recheck(now: datetime, *, wake: bool = False) -> ledger.RecheckOutcome:
        return ledger.recheck_waiting(
            engine, lambda ids: set(), now=now, feature_wait=WAIT, batch_size=8, limit=10, wake=wake
        )

    # Each look-up when its backoff ends, up to the last one before the deadline.
    while (request := rows(app_settings, db.prediction_requests)[0]).not_before < RECEIVED + WAIT:
        assert recheck(request.not_before).still_waiting == 1
    # Its last look-up is never later than the deadline itself.
    assert request.not_before == RECEIVED + WAIT
    # Then one look-up at ``last`` (an import's wake-up, so it is looked up even before it is due).
    final = recheck(last, wake=True)

    [request] = rows(app_settings, db.prediction_requests)
    assert request.status == status
    letters = rows(app_settings, db.dead_letters)
    if status == ledger.RequestStatus.DEAD_LETTERED:
        assert (final.still_waiting, final.dead_lettered) == (0, 1)
        assert [(d.reason, d.record_id) for d in letters] == [(ledger.UNKNOWN_RECORD, 42)]
    else:
        assert (final.still_waiting, final.dead_lettered) == (1, 0)
        assert letters == []
        assert request.not_before == RECEIVED + WAIT
