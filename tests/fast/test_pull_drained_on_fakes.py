"""When a tick's pull counts as draining the queue, at ``max_pull`` and either side of it.

A partial batch closes on the tick whose pull found no backlog behind it (``ledger/closing.py``),
otherwise at its max wait. The clock never moves here, so a batch that closes did not close
for having waited: it closed because the queue was drained.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from dagster import DagsterInstance

from batchinfer_dagster import db
from batchinfer_dagster.clients.queue import (
    LocalQueueConfig,
    QueueUnavailableError,
    ReceivedMessage,
)
from batchinfer_dagster.defs.sensors import BACKLOG_PROBE_SECONDS, TickOutcome, process_tick
from batchinfer_dagster.settings import Settings
from batchinfer_testing.deployment import resources_of, rows
from batchinfer_testing.fakes.feature_store import InMemoryFeatureStore
from batchinfer_testing.fakes.queue import InMemoryQueue

T0 = datetime(2026, 12, 6, 2, 0, tzinfo=UTC)
MAX_PULL = 3


def at_t0() -> datetime:
    return T0


class RecordingQueue(InMemoryQueue):
    """An ``InMemoryQueue`` that records each pull's ``(max_messages, timeout)`` and can fail
    the pulls after the first ``fail_after``."""

    def __init__(self, *, fail_after: int | None = None) -> None:
        super().__init__(LocalQueueConfig(lease_seconds=60, max_delivery_attempts=5), clock=at_t0)
        self.pulls: list[tuple[int, float]] = []
        self.fail_after = fail_after

    def pull(self, max_messages: int, timeout: float) -> list[ReceivedMessage]:
        self.pulls.append((max_messages, timeout))
        if self.fail_after is not None and len(self.pulls) > self.fail_after:
            raise QueueUnavailableError("503 the queue is down")
        return super().pull(max_messages, timeout)


@pytest.fixture
def settings(fast_settings: Settings) -> Settings:
    """Batches of 8 that wait 15 s for company, pulls of 3."""
    return fast_settings.model_copy(
        update={"batch_size": 8, "batch_max_wait_seconds": 15.0, "max_pull": MAX_PULL}
    )


def tick(settings: Settings, queue: RecordingQueue) -> TickOutcome:
    return process_tick(
        DagsterInstance.ephemeral(),
        resources_of(settings)["ledger"],
        queue,
        feature_store=InMemoryFeatureStore(),
        clock=at_t0,
        lease_seconds=60,
    )


def publish(queue: RecordingQueue, count: int) -> None:
    queue.publish([f'{{"id": "{i}"}}'.encode() for i in range(1, count + 1)])


def batch_sizes(settings: Settings) -> list[int]:
    requests = rows(
        settings, db.prediction_requests, db.prediction_requests.c.batch_key.isnot(None)
    )
    return sorted(
        [sum(1 for r in requests if r.batch_key == key) for key in {r.batch_key for r in requests}]
    )


def test_one_under_max_pull_the_pull_drained_the_queue_and_the_batch_closes(
    settings: Settings,
) -> None:
    queue = RecordingQueue()
    publish(queue, MAX_PULL - 1)

    outcome = tick(settings, queue)

    assert (outcome.pulled, len(outcome.run_requests), outcome.pending) == (2, 1, 0)
    assert batch_sizes(settings) == [2]
    assert queue.pulls == [(MAX_PULL, settings.pull_timeout_seconds)]  # no second pull


def test_exactly_max_pull_then_an_empty_pull_is_drained_and_the_batch_closes_at_once(
    settings: Settings,
) -> None:
    queue = RecordingQueue()
    publish(queue, MAX_PULL)

    outcome = tick(settings, queue)

    assert (outcome.pulled, len(outcome.run_requests), outcome.pending) == (3, 1, 0)
    assert batch_sizes(settings) == [3]
    assert queue.pulls == [(MAX_PULL, settings.pull_timeout_seconds), (1, BACKLOG_PROBE_SECONDS)]
    assert outcome.queue_error is None
    assert queue.depth() == 0


def test_one_past_max_pull_is_a_backlog_the_batch_waits_for_the_next_pull(
    settings: Settings,
) -> None:
    """The second pull finds the 4th message: taken with the rest (not handed back, which
    would count a delivery), and the batch stays open; the next tick's empty pull closes it,
    still at T0, long before its 15 s."""
    queue = RecordingQueue()
    publish(queue, MAX_PULL + 1)

    first = tick(settings, queue)

    assert (first.pulled, first.accepted, len(first.run_requests), first.pending) == (4, 4, 0, 4)
    assert queue.depth() == 0  # all four acked
    second = tick(settings, queue)
    assert (second.pulled, len(second.run_requests), second.pending) == (0, 1, 0)
    assert batch_sizes(settings) == [4]


def test_a_queue_that_fails_the_second_pull_keeps_the_first_and_leaves_the_batch_open(
    settings: Settings,
) -> None:
    queue = RecordingQueue(fail_after=1)
    publish(queue, MAX_PULL)

    outcome = tick(settings, queue)

    assert (outcome.accepted, len(outcome.run_requests), outcome.pending) == (3, 0, 3)
    assert outcome.queue_error is not None
    assert "after a full pull of 3" in outcome.queue_error
    assert "503 the queue is down" in outcome.queue_error
