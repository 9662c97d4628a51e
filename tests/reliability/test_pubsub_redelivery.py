"""Fault 5: the Pub/Sub emulator redelivers while a tick is slow, and a message is published twice.

Tick A pulls and then stalls past the 10 s ack deadline; meanwhile the loop's next ticks get
the same messages again from the emulator. Both write the ledger; each message stays one request
row (its key is message id + publish time) and each record one prediction.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

from dagster import DagsterInstance, SensorResult, build_sensor_context

from batchinfer_dagster.assets import BatchinferResource
from batchinfer_dagster.resources.queue import ReceivedMessage, RequestQueue
from batchinfer_dagster.sensors import prediction_requests_sensor
from batchinfer_dagster.settings import Settings
from tests.conftest import pubsub_settings
from tests.reliability.invariants import Published, assert_invariants
from tests.reliability.pipeline import id_payloads, load_records, publish, run_daemon_loop
from tests.services import PubSubEmulator

STALL_SECONDS = 13.0


class StallingQueue(RequestQueue):
    """The real queue; a pull stalls ``STALL_SECONDS`` after receiving, past the ack deadline."""

    def __init__(self, queue: RequestQueue, pulled: list[str], stalled: threading.Event) -> None:
        self.queue = queue
        self.pulled = pulled
        self.stalled = stalled

    def publish(self, payloads: Sequence[bytes]) -> list[str]:
        return self.queue.publish(payloads)

    def pull(self, max_messages: int, timeout: float) -> list[ReceivedMessage]:
        messages = self.queue.pull(max_messages, timeout)
        self.pulled += [m.message_id for m in messages]
        self.stalled.set()
        time.sleep(STALL_SECONDS)
        return messages

    def ack(self, ack_ids: Sequence[str]) -> None:
        self.queue.ack(ack_ids)

    def nack(self, ack_ids: Sequence[str]) -> None:
        self.queue.nack(ack_ids)

    def close(self) -> None:
        self.queue.close()


class StallingResource(BatchinferResource):
    def get_queue(self) -> RequestQueue:
        return StallingQueue(super().get_queue(), STALLED_PULLS, STALLED)


STALLED_PULLS: list[str] = []
STALLED = threading.Event()


def test_redelivery_during_a_slow_tick_and_a_double_publish(
    instance: DagsterInstance, sqlite_settings: Settings, emulator: PubSubEmulator
) -> None:
    settings = pubsub_settings(
        sqlite_settings.model_copy(update={"max_pull": 1000}), emulator, ack_deadline_seconds=10
    )
    records = load_records(settings, 200)
    twice = records[:25]
    published = Published(valid=records + twice)
    publish(settings, id_payloads(records))
    publish(settings, id_payloads(twice))

    slow_result: list[SensorResult] = []

    def slow_tick() -> None:
        resource = StallingResource(settings_json=settings.model_dump_json())
        context = build_sensor_context(instance=instance, resources={"batchinfer": resource})
        slow_result.append(prediction_requests_sensor(context))

    STALLED_PULLS.clear()
    STALLED.clear()
    slow = threading.Thread(target=slow_tick)
    slow.start()
    assert STALLED.wait(60), "the slow tick never pulled"
    try:
        report = run_daemon_loop(instance, settings, expect=len(published.valid))
    finally:
        slow.join()
    report_after = run_daemon_loop(instance, settings, expect=len(published.valid))
    assert len(STALLED_PULLS) == len(published.valid), "the slow tick did not pull everything"
    assert report.runs > 0, "the other ticks got no redelivered message"
    assert slow_result
    assert isinstance(slow_result[0], SensorResult)
    counts = assert_invariants(settings, published, "Pub/Sub redelivery + double publish")
    print(counts, report, report_after)
