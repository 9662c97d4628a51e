"""The ledger's seams, driven by the in-memory fakes: no server, no process, an injected clock.

Each test scripts one fault the real-service tiers need a proxy, a kill or a wait for: a message
never acked until the queue gives up on it, a record the model refuses alone, a model that fails
transiently and then answers, a run that Dagster reports finished without settling its batch.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from dagster import DagsterInstance

from batchinfer_dagster import db, ledger
from batchinfer_dagster.clients.model_client import TransientModelError
from batchinfer_dagster.clients.queue import LocalQueueConfig
from batchinfer_dagster.defs.sensors import process_tick
from batchinfer_dagster.prediction import Predictor
from batchinfer_dagster.settings import Settings
from batchinfer_testing.deployment import engine_of, resources_of, rows
from batchinfer_testing.fakes.feature_store import InMemoryFeatureStore
from batchinfer_testing.fakes.model_client import ScriptedModelClient
from batchinfer_testing.fakes.queue import InMemoryQueue
from batchinfer_testing.fakes.resources import fast_resources
from batchinfer_testing.fakes.runs import DictRuns

T0 = datetime(2026, 12, 5, 8, 0, tzinfo=UTC)


class Clock:
    """A clock a test moves by hand."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


def predictor(
    settings: Settings, store: InMemoryFeatureStore, model: ScriptedModelClient, clock: Clock
) -> Predictor:
    return Predictor(
        engine=engine_of(settings),
        feature_store=store,
        model=model,
        parameters=resources_of(settings)["model_server"].parameters(),
        feature_wait=timedelta(seconds=settings.feature_wait_seconds),
        clock=clock,
    )


def test_a_never_acked_message_is_dead_lettered_by_the_ledger_after_its_deliveries(
    fast_settings: Settings,
) -> None:
    """The queue gives up at max_delivery_attempts (one past is never delivered); the sensor
    reads it back and the ledger writes the one dead letter."""
    clock = Clock()
    attempts = fast_settings.max_delivery_attempts
    queue = InMemoryQueue(
        LocalQueueConfig(lease_seconds=10, max_delivery_attempts=attempts), clock=clock
    )
    queue.publish([b'{"id": "1"}'])
    for delivery in range(1, attempts + 1):
        [message] = queue.pull(10, 0)
        assert message.delivery_attempt == delivery
        assert queue.pull(10, 0) == []  # leased
        clock.now += timedelta(seconds=10)
    assert queue.pull(10, 0) == []  # the delivery one past the maximum never happens
    instance = DagsterInstance.ephemeral()
    policy = resources_of(fast_settings)["ledger"]
    outcome = process_tick(
        instance, policy, queue, feature_store=InMemoryFeatureStore(), clock=clock, lease_seconds=10
    )
    assert outcome.queue_dead_letters == 1
    [letter] = rows(fast_settings, db.dead_letters)
    assert (letter.source, letter.record_id) == (ledger.DeadLetterSource.QUEUE, 1)
    assert f"after {attempts} deliveries" in letter.reason
    assert queue.depth() == 0


def test_a_redelivered_message_is_one_request(fast_settings: Settings) -> None:
    clock = Clock()
    queue = InMemoryQueue(LocalQueueConfig(lease_seconds=10, max_delivery_attempts=5), clock=clock)
    queue.publish([b'{"id": "1"}', b"not json"])
    first = queue.pull(10, 0)
    clock.now += timedelta(seconds=10)  # the lease ran out before any ack
    again = queue.pull(10, 0)
    engine = engine_of(fast_settings)
    for pulled in (first, again):
        ledger.ingest_messages(engine, pulled, queue=queue.kind, batch_size=8, now=clock())
    assert [r.record_id for r in rows(fast_settings, db.prediction_requests)] == [1]
    assert [r.source for r in rows(fast_settings, db.dead_letters)] == ["sensor"]


def test_a_record_the_model_refuses_alone_is_dead_lettered_and_the_rest_predicted(
    fast_settings: Settings,
) -> None:
    clock = Clock()
    store = InMemoryFeatureStore()
    store.add({1: "refund please", 2: "poison", 3: "app crashes"})
    store.import_records()
    model = ScriptedModelClient(chunk_size=2, max_request_bytes=4096)
    model.refuse = {"poison": "the text is poison"}
    engine = engine_of(fast_settings)
    (key,) = ledger.create_batches(engine, [1, 2, 3], source="test", batch_size=8, now=T0)

    outcome = predictor(fast_settings, store, model, clock).predict(key, run_id="r1")

    assert (outcome.predicted, outcome.refused) == ([1, 3], 1)
    [letter] = rows(fast_settings, db.dead_letters)
    assert (letter.source, letter.record_id) == (ledger.DeadLetterSource.MODEL, 2)
    assert "the text is poison" in letter.reason
    # Chunks of two: [1, 2] refused 2 and was resent as [1]; [3] alone.
    assert sorted(model.requests) == sorted(
        [["refund please", "poison"], ["refund please"], ["app crashes"]]
    )


def test_a_transient_failure_fails_the_batch_and_the_next_attempt_predicts_it(
    fast_settings: Settings,
) -> None:
    clock = Clock()
    store = InMemoryFeatureStore()
    store.add({1: "refund please"})
    store.import_records()
    model = ScriptedModelClient(chunk_size=2, max_request_bytes=4096)
    model.transient_failures = 1
    engine = engine_of(fast_settings)
    (key,) = ledger.create_batches(engine, [1], source="test", batch_size=8, now=T0)
    run = predictor(fast_settings, store, model, clock)

    with pytest.raises(TransientModelError, match="scripted transient"):
        run.predict(key, run_id="r1")
    [batch] = rows(fast_settings, db.prediction_batches)
    assert batch.status == ledger.BatchStatus.FAILED
    assert rows(fast_settings, db.predictions) == []

    assert run.predict(key, run_id="r2").predicted == [1]
    [batch] = rows(fast_settings, db.prediction_batches)
    assert batch.status == ledger.BatchStatus.SUCCEEDED


@pytest.mark.parametrize(("attempts_used", "retried"), [(2, True), (3, False)])
def test_reconcile_retries_a_finished_unsettled_batch_until_its_last_attempt(
    fast_settings: Settings, attempts_used: int, retried: bool
) -> None:
    """With a dict for Dagster's runs: attempts below max_attempts (3) retry, at it dead-letter."""
    engine = engine_of(fast_settings)
    (key,) = ledger.create_batches(engine, [1], source="test", batch_size=8, now=T0)
    for _ in range(attempts_used):
        ledger.count_attempt(engine, [key], now=T0)
    runs = DictRuns({key: ledger.RunState.FINISHED})

    outcome = ledger.reconcile(
        engine, runs, max_attempts=fast_settings.max_attempts, now=T0 + timedelta(minutes=5)
    )

    assert runs.asked == [[key]]
    assert outcome.retried == ({key: attempts_used + 1} if retried else {})
    assert outcome.dead_lettered == ([] if retried else [key])


def test_the_fast_resources_share_one_fake_per_name(fast_settings: Settings) -> None:
    resources = fast_resources(fast_settings, "shared")
    resources["request_queue"].client().publish([b'{"id": "1"}'])
    assert len(resources["request_queue"].client().pull(10, 0)) == 1
    with resources["model_server"].open() as model:
        assert model.chunk_size == fast_settings.model_chunk_size
    assert resources["model_server"].retries == fast_settings.model_retries


def test_a_record_missing_from_the_store_waits_and_is_rebatched_once_imported(
    fast_settings: Settings,
) -> None:
    """Not in the store: the run leaves it waiting; still missing, a look-up makes no batch;
    imported, the next look-up (woken by the import) puts it into a new batch, predicted then."""
    clock = Clock()
    store = InMemoryFeatureStore()
    model = ScriptedModelClient(chunk_size=2, max_request_bytes=4096)
    engine = engine_of(fast_settings)
    (key,) = ledger.create_batches(engine, [7], source="test", batch_size=8, now=T0)
    run = predictor(fast_settings, store, model, clock)

    assert run.predict(key, run_id="r1").waiting == 1
    assert model.requests == []  # nothing was sent for a missing record

    def lookup(record_ids: list[int]) -> set[int]:
        return set(store.fetch(record_ids))

    recheck = {"feature_wait": timedelta(hours=1), "batch_size": 8, "limit": 100, "wake": True}
    missing = ledger.recheck_waiting(engine, lookup, now=clock(), **recheck)
    assert (missing.batch_keys, missing.still_waiting) == ([], 1)

    store.add({7: "refund please"})
    store.import_records()
    found = ledger.recheck_waiting(engine, lookup, now=clock(), **recheck)
    [new_key] = found.batch_keys
    assert run.predict(new_key, run_id="r2").predicted == [7]
