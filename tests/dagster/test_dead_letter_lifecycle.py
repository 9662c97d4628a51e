"""Dead letters have a lifecycle: open, then resolved by the run that predicts the record; replay.

And whatever moved a message aside (the sensor, a run, the local queue, or Pub/Sub's own
dead-letter policy), it is in ``dead_letters``: Pub/Sub's dead-letter topic is read back.
"""

from __future__ import annotations

import json
import time

from dagster import DagsterInstance, RunRequest

from batchinfer_dagster import db, ledger
from batchinfer_dagster.defs.sensors import process_tick
from batchinfer_dagster.settings import Settings
from batchinfer_testing.cli_runner import lines, run
from batchinfer_testing.daemon import execute_runs, run_daemon_loop, sensor_tick
from batchinfer_testing.deployment import (
    local_feature_store,
    open_queue,
    publish_json,
    pubsub_settings,
    resources_of,
    rows,
)
from batchinfer_testing.services import PubSubEmulator


def status(settings: Settings) -> dict:
    return json.loads(run(settings, "status").stdout)


def test_a_dead_lettered_batch_re_materialized_later_resolves_its_dead_letters(
    instance: DagsterInstance, pipeline_settings: Settings
) -> None:
    """Issue example 4: the batch's rows used to stay dead, counted as predicted and dead."""
    refusing = pipeline_settings.model_copy(
        update={"model_url": f"{pipeline_settings.model_url}/no-such-route"}
    )
    local_feature_store(refusing).upsert([(1, "refund please"), (2, "app crash")])
    publish_json(refusing, [{"id": 1}, {"id": 2}])
    report = run_daemon_loop(instance, refusing)
    assert [run.success for run in report.runs] == [False]  # 404: the whole batch refused
    assert status(refusing)["dead_letters"] == 2
    [batch] = rows(refusing, db.prediction_batches)

    # Re-materialize the same partition once the server is right (as from the UI).
    [rerun] = execute_runs(instance, pipeline_settings, [RunRequest(partition_key=batch.batch_key)])
    assert rerun.success

    letters = rows(pipeline_settings, db.dead_letters)
    assert {letter.record_id for letter in letters} == {1, 2}
    assert all(letter.resolved_at is not None for letter in letters)
    assert {letter.resolved_by_run for letter in letters} == {rerun.run_id}
    counts = status(pipeline_settings)
    assert (counts["predictions"], counts["dead_letters"], counts["dead_letters_resolved"]) == (
        2,
        0,
        2,
    )
    assert lines(run(pipeline_settings, "dead-letters")) == []
    listed = lines(run(pipeline_settings, "dead-letters", "--all"))
    assert [(d["record_id"], d["resolved_by_run"]) for d in listed] == [
        (1, rerun.run_id),
        (2, rerun.run_id),
    ]


# None of these dead letters belongs to a rollout: none replayed into one or closed with it.
NO_ROLLOUT = {"into_rollouts": 0, "rollout_closed": 0}


def test_replay_asks_again_once_and_the_prediction_resolves_it(
    instance: DagsterInstance, pipeline_settings: Settings
) -> None:
    settings = pipeline_settings.model_copy(update={"feature_wait_seconds": 0})
    local_feature_store(settings).upsert([(1, "refund please")])
    publish_json(settings, [{"id": 1}, {"id": 7}, {"id": 8}, "not a request"])
    run_daemon_loop(instance, settings)
    open_letters = {row.record_id: row for row in rows(settings, db.dead_letters)}
    assert set(open_letters) == {7, 8, None}  # 7 and 8 unknown, one malformed
    assert open_letters[7].reason == ledger.UNKNOWN_RECORD

    local_feature_store(settings).upsert([(7, "my phone app freezes"), (8, "login fails")])
    by_id = run(settings, "dead-letters", "replay", "--id", str(open_letters[7].id))
    assert lines(by_id) == [
        {"replayed": 1, "already_replayed": 0, "not_replayable": 0} | NO_ROLLOUT
    ]
    by_reason = run(settings, "dead-letters", "replay", "--reason", "unknown record")
    assert lines(by_reason) == [
        {"replayed": 1, "already_replayed": 1, "not_replayable": 0} | NO_ROLLOUT
    ]
    again = run(settings, "dead-letters", "replay")
    assert lines(again) == [
        {"replayed": 0, "already_replayed": 2, "not_replayable": 1} | NO_ROLLOUT
    ]

    run_daemon_loop(instance, settings)

    assert sorted(row.record_id for row in rows(settings, db.predictions)) == [1, 7, 8]
    letters = {row.record_id: row for row in rows(settings, db.dead_letters)}
    assert [letters[i].resolved_at is not None for i in (7, 8)] == [True, True]
    assert [bool(letters[i].replay_message_id) for i in (7, 8)] == [True, True]
    assert letters[None].resolved_at is None  # a malformed message stays open
    assert status(settings)["dead_letters"] == 1


def nack_until_dead_lettered(settings: Settings, deliveries: int, timeout: float = 60) -> int:
    """Deliver and refuse the request queue's messages until Pub/Sub moves them aside."""
    queue = open_queue(settings)
    seen = 0
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            messages = queue.pull(10, 2.0)
            if not messages:
                if seen >= deliveries:
                    return seen
                continue
            seen += len(messages)
            queue.nack([m.ack_id for m in messages])
    finally:
        queue.close()
    raise AssertionError(f"still delivered after {seen} deliveries")


def test_pubsub_dead_letter_topic_is_read_back_into_dead_letters(
    instance: DagsterInstance,
    app_settings: Settings,
    emulator: PubSubEmulator,
    model_server_url: str,
) -> None:
    settings = pubsub_settings(
        app_settings,
        emulator,
        model_url=model_server_url,
        pull_timeout_seconds=0.5,
        ack_deadline_seconds=10,
        max_delivery_attempts=5,
    )
    local_feature_store(settings).upsert([(5, "my invoice is wrong")])
    publish_json(settings, [{"id": 5}])
    # Every delivery refused (a sensor that crashes before its ack, five times over).
    assert nack_until_dead_lettered(settings, deliveries=5) == 5

    # Pub/Sub forwards it after its retry backoff: the sensor's ticks read it back.
    deadline = time.monotonic() + 60
    while not rows(settings, db.dead_letters) and time.monotonic() < deadline:
        assert sensor_tick(instance, settings).run_requests == []

    [letter] = rows(settings, db.dead_letters)
    assert letter.source == ledger.DeadLetterSource.PUBSUB_DEAD_LETTER
    assert (letter.payload, letter.record_id) == ('{"id": 5}', 5)
    assert letter.delivery_attempts == 5
    assert "Pub/Sub dead-lettered the message after 5 delivery attempts" in letter.reason
    assert letter.resolved_at is None
    assert rows(settings, db.predictions) == []

    assert lines(run(settings, "dead-letters", "replay")) == [
        {"replayed": 1, "already_replayed": 0, "not_replayable": 0} | NO_ROLLOUT
    ]
    run_daemon_loop(instance, settings)

    assert [row.record_id for row in rows(settings, db.predictions)] == [5]
    [letter] = rows(settings, db.dead_letters)
    assert letter.resolved_at is not None  # and read back once, though drained twice


def test_a_missing_dead_letter_subscription_is_reported_and_intake_goes_on(
    instance: DagsterInstance, app_settings: Settings, emulator: PubSubEmulator
) -> None:
    settings = pubsub_settings(
        app_settings, emulator, pull_timeout_seconds=0.5, batch_size=4
    ).model_copy(update={"pubsub_dead_letter_subscription": "no-such-subscription"})
    publish_json(settings, [{"id": 1}, "malformed"])
    queue = open_queue(settings)
    try:
        outcome = process_tick(
            instance,
            resources_of(settings)["ledger"],
            queue,
            feature_store=local_feature_store(settings),
            lease_seconds=settings.ack_deadline_seconds,
        )
    finally:
        queue.close()

    assert (outcome.accepted, outcome.malformed, len(outcome.run_requests)) == (1, 1, 1)
    assert outcome.dead_letter_error is not None
    assert "'no-such-subscription' exist" in outcome.dead_letter_error
    assert "no-such-subscription" in outcome.summary()
