"""A run's batch: the feature backoff."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from batchinfer_dagster import db, ledger
from batchinfer_dagster.clients.queue import ReceivedMessage
from batchinfer_dagster.settings import Settings
from batchinfer_testing.deployment import engine_of, rows

NOW = datetime(2026, 11, 25, 8, 0, tzinfo=UTC)


def message(message_id: str, data: bytes) -> ReceivedMessage:
    return ReceivedMessage(message_id, f"ack-{message_id}", data, 1, NOW)


def test_feature_backoff_grows_and_is_capped() -> None:
    waits = [ledger.feature_backoff(attempt) for attempt in range(6)]
    assert waits == sorted(waits)
    assert waits[0] == ledger.FEATURE_BACKOFF_BASE
    assert waits[-1] == ledger.FEATURE_BACKOFF_MAX


def test_a_transition_outside_the_state_machine_changes_nothing(app_settings: Settings) -> None:
    """A settled batch cannot fail: ``fail_batch`` after success leaves it succeeded."""
    engine = engine_of(app_settings)
    (key,) = ledger.create_batches(engine, [1], source="test", batch_size=8, now=NOW)
    ledger.start_batch(engine, key, run_id="r", now=NOW)
    requests = ledger.start_batch(engine, key, run_id="r", now=NOW)
    ledger.settle_batch(
        engine,
        ledger.Settlement(
            batch_key=key,
            run_id="r",
            requests=requests,
            configuration=None,
            answers={},
            feature_wait=timedelta(0),
            now=NOW,
        ),
    )
    ledger.fail_batch(engine, key, error="late error", now=NOW)
    (batch,) = rows(app_settings, db.prediction_batches)
    assert batch.status == ledger.BatchStatus.SUCCEEDED
    (request,) = rows(app_settings, db.prediction_requests)
    assert request.status == ledger.RequestStatus.DEAD_LETTERED
    assert request.error == ledger.UNKNOWN_RECORD


def test_every_state_is_reachable_and_settled_states_only_restart() -> None:
    from batchinfer_dagster.ledger.states import (
        BATCH_TRANSITIONS,
        REQUEST_TRANSITIONS,
        BatchStatus,
        RequestStatus,
        may_become,
    )

    assert set(REQUEST_TRANSITIONS) == set(RequestStatus)
    assert set(BATCH_TRANSITIONS) == set(BatchStatus)
    leaving_succeeded = [
        t for t, sources in BATCH_TRANSITIONS.items() if BatchStatus.SUCCEEDED in sources
    ]
    assert leaving_succeeded == [BatchStatus.RUNNING]
    assert may_become(BatchStatus.FAILED) == ["running"]
