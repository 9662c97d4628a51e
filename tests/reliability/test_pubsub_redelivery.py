"""Fault 5: the Pub/Sub emulator redelivers while a tick is slow, and a message is published twice.

Tick A pulls and then stalls past the 10 s ack deadline; meanwhile the loop's next ticks get
the same messages again from the emulator. Both write the ledger; each message stays one request
row (its key is message id + publish time) and each record one prediction.
"""

from __future__ import annotations

import threading

from dagster import DagsterInstance, SensorResult

from batchinfer_dagster.settings import Settings
from batchinfer_testing.daemon import run_daemon_loop, sensor_tick
from batchinfer_testing.deployment import (
    id_payloads,
    load_records,
    publish,
    pubsub_settings,
    resources_of,
)
from batchinfer_testing.invariants import Published, assert_invariants
from batchinfer_testing.queues import FaultInjectingQueueResource, observations
from tests.services import PubSubEmulator

STALL_SECONDS = 13.0


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

    stalling = FaultInjectingQueueResource.around(
        resources_of(settings)["request_queue"],
        "stall-after-pull",
        stall_seconds=STALL_SECONDS,
        name="slow tick",
    )
    seen = observations("slow tick")
    seen.pulled.clear()
    seen.stalled.clear()

    def slow_tick() -> None:
        slow_result.append(sensor_tick(instance, settings, request_queue=stalling))

    slow = threading.Thread(target=slow_tick)
    slow.start()
    assert seen.stalled.wait(60), "the slow tick never pulled"
    try:
        report = run_daemon_loop(instance, settings, expect=len(published.valid))
    finally:
        slow.join()
    report_after = run_daemon_loop(instance, settings, expect=len(published.valid))
    assert len(seen.pulled) == len(published.valid), "the slow tick did not pull everything"
    assert len(report.runs) > 0, "the other ticks got no redelivered message"
    assert slow_result
    assert isinstance(slow_result[0], SensorResult)
    counts = assert_invariants(settings, published, "Pub/Sub redelivery + double publish")
    print(counts, report, report_after)
