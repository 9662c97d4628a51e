"""Fault 14: the queue is down; the sensor's ledger work goes on. And a feature store that fails.

Work already in the ledger needs no queue: a batch written by the launchpad
(``request_predictions_job``), a failed batch to retry, a request waiting for a record that has
arrived in the feature store. Before the fix the tick raised at its pull, so none of them got a
run until the queue was back. Two queues that are down: one that raises
``QueueUnavailableError`` on every call, and the real Pub/Sub client pointed at a port where
nothing listens. On both app databases.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

import pytest
from dagster import DagsterInstance, RunRequest

from batchinfer_dagster import db, ledger
from batchinfer_dagster.clients.feature_store import FeatureStore, ImportResult
from batchinfer_dagster.clients.queue import QueueUnavailableError, RequestQueue, UnreachableQueue
from batchinfer_dagster.defs import asset_events
from batchinfer_dagster.defs.sensors import TickOutcome, process_tick
from batchinfer_dagster.settings import Settings
from batchinfer_testing.daemon import execute_runs, sensor_tick
from batchinfer_testing.deployment import (
    engine_of,
    local_feature_store,
    model_server_of,
    open_queue,
    publish_json,
    resources_of,
    rows,
)
from batchinfer_testing.processes import free_port

FEATURE_WAIT = timedelta(seconds=600)


@pytest.fixture
def settings(app_settings: Settings) -> Settings:
    """No model server answers (runs fail and are retried), a 600 s feature wait."""
    return app_settings.model_copy(
        update={
            "model_url": f"http://127.0.0.1:{free_port()}",
            "max_attempts": 3,
            "feature_wait_seconds": int(FEATURE_WAIT.total_seconds()),
            "batch_size": 8,
        }
    )


def unreachable() -> UnreachableQueue:
    return UnreachableQueue(QueueUnavailableError("Pub/Sub (test) failed: connection refused"))


def tick(
    instance: DagsterInstance,
    settings: Settings,
    queue: RequestQueue,
    *,
    feature_store: FeatureStore | None = None,
    after: timedelta = timedelta(0),
) -> TickOutcome:
    return process_tick(
        instance,
        resources_of(settings)["ledger"],
        queue,
        feature_store=feature_store or local_feature_store(settings),
        features_changed=True,
        clock=lambda: db.utcnow() + after,
        lease_seconds=settings.ack_deadline_seconds,
    )


def waiting_and_failed_batches(instance: DagsterInstance, settings: Settings) -> tuple[str, str]:
    """Record 7 waiting for its features (then imported), and a batch of record 1 whose run
    failed (no model server); returns the failed batch's key and the launchpad batch's."""
    store = local_feature_store(settings)
    publish_json(settings, [{"id": 7}])
    [waiting] = execute_runs(instance, settings, sensor_tick(instance, settings).run_requests)
    assert waiting.success
    store.upsert([(1, "I was charged twice, please refund")])
    publish_json(settings, [{"id": 1}])
    [failed_request] = sensor_tick(instance, settings).run_requests
    no_retry = model_server_of(settings, retries=0, retry_delay_seconds=0)
    [failed] = execute_runs(instance, settings, [failed_request], model_server=no_retry)
    assert not failed.success
    [launchpad] = ledger.create_batches(
        engine_of(settings), [1], source="launchpad", batch_size=8, now=db.utcnow()
    )
    store.upsert([(7, "The app crashes on my phone")])
    return failed_request.partition_key, launchpad


def assert_ledger_work_requested(
    run_requests: Sequence[RunRequest], failed: str, launchpad: str
) -> None:
    """The failed batch's second attempt, the launchpad batch's first run, and a new batch for
    the waiting record that arrived."""
    keys = {request.partition_key: request.run_key for request in run_requests}
    assert keys.pop(failed) == f"{failed}#2"
    assert keys.pop(launchpad) == launchpad
    [(rebatched, run_key)] = keys.items()
    assert rebatched == run_key


def test_a_queue_outage_stops_only_the_pull_and_the_ack(
    instance: DagsterInstance, settings: Settings
) -> None:
    failed, launchpad = waiting_and_failed_batches(instance, settings)
    outcome = tick(instance, settings, unreachable())

    assert outcome.pulled == 0
    assert outcome.queue_error is not None
    assert "pulling the request queue failed" in outcome.queue_error
    # The dead-letter subscription is not tried while the queue is down.
    assert outcome.dead_letter_error is None
    assert_ledger_work_requested(outcome.run_requests, failed, launchpad)
    assert len(outcome.rebatched) == 1


def test_the_real_sensor_with_nobody_listening_at_the_emulator_address(
    instance: DagsterInstance, settings: Settings
) -> None:
    """The Pub/Sub client itself refuses to open (``check_emulator``): the tick goes on."""
    failed, launchpad = waiting_and_failed_batches(instance, settings)
    # An import happened (the sensor's cursor moves): the waiting request is looked up now.
    asset_events.report_features_materialized(instance, ImportResult(1, 2), 0.0)
    nobody = settings.model_copy(
        update={
            "queue": "pubsub",
            "pubsub_emulator_host": f"127.0.0.1:{free_port()}",
            "pubsub_project": "outage-test",
        }
    )
    result = sensor_tick(instance, nobody)
    assert_ledger_work_requested(result.run_requests, failed, launchpad)


def test_pending_requests_close_into_batches_while_the_queue_is_down(
    instance: DagsterInstance, app_settings: Settings
) -> None:
    """Requests accepted before the outage that wait for their batch to fill (closing rule:
    at most 30 s) get their batch and run on a tick that pulled nothing. The first pull is full
    (``max_pull`` 2) and the one-message pull after it finds a 3rd, a backlog, so the batch is
    left open (ledger/closing.py)."""
    settings = app_settings.model_copy(
        update={"batch_max_wait_seconds": 30, "batch_size": 8, "max_pull": 2}
    )
    publish_json(settings, [{"id": 1}, {"id": 2}, {"id": 3}])
    first = sensor_tick(instance, settings)
    assert first.run_requests == []
    outcome = tick(instance, settings, unreachable(), after=timedelta(seconds=31))
    assert outcome.queue_error is not None
    assert len(outcome.run_requests) == 1
    assert {r.status for r in rows(settings, db.prediction_requests)} == {"queued"}


class FailingFeatureStore(FeatureStore):
    """A feature store whose look-ups fail (Vertex AI answering 503, say)."""

    def __init__(self) -> None:
        self.lookups: list[list[int]] = []

    def import_records(self, *, full: bool = False) -> ImportResult:
        raise NotImplementedError

    def fetch(self, record_ids: Sequence[int]) -> dict[int, str]:
        self.lookups.append(list(record_ids))
        raise ConnectionError("503 Service Unavailable")

    def list_records(self, limit: int) -> tuple[list[tuple[int, str]], int]:
        raise NotImplementedError


def test_a_failing_feature_store_is_charged_to_the_waiting_requests_only(
    instance: DagsterInstance, settings: Settings
) -> None:
    failed, launchpad = waiting_and_failed_batches(instance, settings)
    [before] = rows(settings, db.prediction_requests, db.prediction_requests.c.record_id == 7)
    store = FailingFeatureStore()
    queue = open_queue(settings)
    try:
        # Past the request's feature wait: a failed look-up still never makes it a dead letter.
        outcome = tick(instance, settings, queue, feature_store=store, after=FEATURE_WAIT * 2)
    finally:
        queue.close()

    assert store.lookups == [[7]]
    assert outcome.feature_store_error is not None
    assert "503 Service Unavailable" in outcome.feature_store_error
    assert (outcome.still_waiting, outcome.waited_out, outcome.rebatched) == (1, 0, [])
    [after] = rows(settings, db.prediction_requests, db.prediction_requests.c.record_id == 7)
    assert after.status == ledger.RequestStatus.WAITING_FEATURES
    assert "503 Service Unavailable" in after.error
    assert after.attempts == before.attempts + 1
    assert after.not_before > before.not_before
    assert rows(settings, db.dead_letters) == []
    # Reconcile and the launchpad batch went on.
    keys = {request.partition_key: request.run_key for request in outcome.run_requests}
    assert keys == {failed: f"{failed}#2", launchpad: launchpad}
