"""The real sensor on the real queues (local table, Pub/Sub emulator) and databases."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
import sqlalchemy as sa
from dagster import DagsterInstance, DagsterRunStatus, materialize

from batchinfer_dagster import db, ledger
from batchinfer_dagster.defs.assets import data_points, features
from batchinfer_dagster.defs.partitions import PREDICTION_BATCHES
from batchinfer_dagster.defs.sensors import (
    TickOutcome,
    newest_features_materialization,
    process_tick,
)
from batchinfer_dagster.records import add_records
from batchinfer_dagster.settings import Settings
from batchinfer_testing.cli_runner import run as run_cli
from batchinfer_testing.daemon import execute_runs, run_daemon_loop, sensor_tick
from batchinfer_testing.deployment import (
    add_features,
    engine_of,
    local_feature_store,
    model_server_of,
    open_queue,
    publish_json,
    queue_is_empty,
    resources_of,
    rows,
)
from batchinfer_testing.processes import free_port
from batchinfer_testing.queues import FaultInjectingQueue


def test_batches_split_at_batch_size_and_partitions_registered(
    instance: DagsterInstance, pipeline_settings: Settings
) -> None:
    settings = pipeline_settings.model_copy(update={"batch_size": 4})
    publish_json(settings, [{"id": str(i)} for i in range(1, 11)])

    result = sensor_tick(instance, settings)

    keys = [request.partition_key for request in result.run_requests]
    assert len(keys) == 3
    assert [request.run_key for request in result.run_requests] == keys
    assert set(instance.get_dynamic_partitions(PREDICTION_BATCHES)) == set(keys)
    sizes = sorted(
        len(rows(settings, db.prediction_requests, db.prediction_requests.c.batch_key == key))
        for key in keys
    )
    assert sizes == [2, 4, 4]
    assert queue_is_empty(settings)


@pytest.mark.parametrize(
    ("published", "batches", "pending"),
    [(2, 1, 0), (3, 1, 0), (4, 0, 4)],
    ids=["one-under-max-pull", "at-max-pull-then-empty", "one-past-max-pull"],
)
def test_a_tick_closes_a_partial_batch_only_when_its_pull_drained_the_queue(
    instance: DagsterInstance,
    pipeline_settings: Settings,
    published: int,
    batches: int,
    pending: int,
) -> None:
    """Batch size 8, a 15 s wait, pulls of 3, on the real queue: 2 or 3 requests leave the
    queue empty behind the pull (at 3, the one-message pull after the full one comes back
    empty), so the tick runs them at once; at 4 that second pull finds the 4th, a backlog, so
    all four wait for the next pull."""
    settings = pipeline_settings.model_copy(
        update={"batch_size": 8, "batch_max_wait_seconds": 15.0, "max_pull": 3}
    )
    publish_json(settings, [{"id": str(i)} for i in range(1, published + 1)])

    result = sensor_tick(instance, settings)

    assert len(result.run_requests) == batches
    unbatched = rows(settings, db.prediction_requests, db.prediction_requests.c.batch_key.is_(None))
    assert len(unbatched) == pending
    assert len(rows(settings, db.prediction_requests)) == published


def test_crash_between_commit_and_ack_gives_one_request_and_one_prediction(
    instance: DagsterInstance, pipeline_settings: Settings
) -> None:
    add_features(pipeline_settings, range(1, 7))
    publish_json(pipeline_settings, [{"id": i} for i in range(1, 7)])
    crashing = FaultInjectingQueue(open_queue(pipeline_settings), "crash-at-ack")
    try:
        process_tick(
            instance,
            resources_of(pipeline_settings)["ledger"],
            crashing,
            feature_store=local_feature_store(pipeline_settings),
            lease_seconds=pipeline_settings.ack_deadline_seconds,
        )
        raise AssertionError("the ack should have crashed the tick")
    except ConnectionAbortedError:
        pass
    finally:
        crashing.close()
    assert len(crashing.crashed_on) == 6
    committed = rows(pipeline_settings, db.prediction_requests)
    assert len(committed) == 6

    # The messages come back; the next ticks see them as redeliveries and ack them.
    run_daemon_loop(instance, pipeline_settings)

    requests = rows(pipeline_settings, db.prediction_requests)
    assert sorted(r.message_id for r in requests) == sorted(r.message_id for r in committed)
    predictions = rows(pipeline_settings, db.predictions)
    assert sorted(p.record_id for p in predictions) == [1, 2, 3, 4, 5, 6]
    assert {r.status for r in requests} == {ledger.RequestStatus.DONE}
    assert queue_is_empty(pipeline_settings)


def test_malformed_messages_become_dead_letters_with_reasons(
    instance: DagsterInstance, pipeline_settings: Settings
) -> None:
    queue = open_queue(pipeline_settings)
    queue.publish(
        [b"{oops", b'{"id": "x1"}', b'{"name": 3}', b"[1]", b'{"id": "9"' + b" " * 10_300 + b"}"]
    )
    queue.close()

    result = sensor_tick(instance, pipeline_settings)

    assert result.run_requests == []
    reasons = sorted(letter.reason for letter in rows(pipeline_settings, db.dead_letters))
    assert len(reasons) == 5
    assert any(reason.startswith("not JSON") for reason in reasons)
    assert "id 'x1' is not a positive integer" in reasons
    assert any(reason.startswith("no 'id' field") for reason in reasons)
    assert "not a JSON object but list" in reasons
    assert any("over the 10240-byte limit" in reason for reason in reasons)
    assert rows(pipeline_settings, db.prediction_requests) == []
    assert queue_is_empty(pipeline_settings)


def test_unknown_ids_wait_for_features_then_dead_letter(
    instance: DagsterInstance, pipeline_settings: Settings
) -> None:
    wait = timedelta(seconds=60)  # far longer than a drain on a loaded machine
    settings = pipeline_settings.model_copy(update={"feature_wait_seconds": wait.seconds})
    add_features(settings, [1])
    publish_json(settings, [{"id": 1}, {"id": 2}, {"id": 3}])
    run_daemon_loop(instance, settings)

    waiting = rows(settings, db.prediction_requests, db.prediction_requests.c.record_id != 1)
    assert {r.status for r in waiting} == {ledger.RequestStatus.WAITING_FEATURES}
    assert all(r.not_before is not None for r in waiting)

    add_features(settings, [2])  # the feature store syncs record 2 late; 3 never comes
    # The wait passes: the ledger's times move back by it instead of the test sleeping, and the
    # wait is credited as the look-ups of a minute would have (runs.credited_wait).
    table = db.prediction_requests
    with engine_of(settings).begin() as connection:
        for row in connection.execute(sa.select(table)).all():
            connection.execute(
                sa.update(table)
                .where(table.c.message_id == row.message_id)
                .values(
                    received_at=row.received_at - wait,
                    not_before=row.not_before - wait if row.not_before else None,
                    feature_waited_seconds=wait.total_seconds(),
                )
            )
    run_daemon_loop(instance, settings)

    by_record = {r.record_id: r for r in rows(settings, db.prediction_requests)}
    assert by_record[2].status == ledger.RequestStatus.DONE
    assert by_record[3].status == ledger.RequestStatus.DEAD_LETTERED
    assert sorted(p.record_id for p in rows(settings, db.predictions)) == [1, 2]
    letters = rows(settings, db.dead_letters)
    assert [(letter.reason, letter.payload) for letter in letters] == [
        (ledger.UNKNOWN_RECORD, '{"id": "3"}')
    ]


def test_failed_batches_retried_with_new_run_keys_then_dead_lettered(
    instance: DagsterInstance, queue_settings: Settings
) -> None:
    settings = queue_settings.model_copy(
        update={
            "model_url": f"http://127.0.0.1:{free_port()}",
            "max_attempts": 3,
            "pull_timeout_seconds": 1.0,
        }
    )
    add_features(settings, [1, 2])
    publish_json(settings, [{"id": 1}, {"id": 2}])

    run_keys: list[str] = []
    for _ in range(3):
        result = sensor_tick(instance, settings)
        assert len(result.run_requests) == 1
        run_keys.append(result.run_requests[0].run_key)
        (run,) = execute_runs(
            instance,
            settings,
            result.run_requests,
            model_server=model_server_of(settings, retries=1, retry_delay_seconds=0),
        )
        assert not run.success
        retries = [e for e in run.all_node_events if e.event_type_value == "STEP_UP_FOR_RETRY"]
        assert len(retries) == 1  # a transient error is retried in the run first
    final = sensor_tick(instance, settings)

    batch = run_keys[0]
    assert run_keys == [batch, f"{batch}#2", f"{batch}#3"]
    assert final.run_requests == []
    failed_runs = instance.get_run_records()
    assert {record.dagster_run.status for record in failed_runs} == {DagsterRunStatus.FAILURE}
    (batch_row,) = rows(settings, db.prediction_batches)
    assert (batch_row.status, batch_row.attempts) == (ledger.BatchStatus.DEAD_LETTERED, 3)
    letters = rows(settings, db.dead_letters)
    assert len(letters) == 2
    assert all("failed after 3 attempts" in letter.reason for letter in letters)
    assert all("unreachable" in letter.reason for letter in letters)
    assert rows(settings, db.predictions) == []


def test_a_record_the_server_refuses_is_dead_lettered_alone(
    instance: DagsterInstance, pipeline_settings: Settings
) -> None:
    """The server refuses one instance (422, instance_errors); the batch's others are predicted."""
    store = local_feature_store(pipeline_settings)
    store.upsert([(1, "my invoice is wrong"), (2, "   "), (3, "the app crashes")])
    publish_json(pipeline_settings, [{"id": 1}, {"id": 2}, {"id": 3}])

    report = run_daemon_loop(instance, pipeline_settings)

    assert [run.success for run in report.runs] == [True]
    assert sorted(row.record_id for row in rows(pipeline_settings, db.predictions)) == [1, 3]
    (letter,) = rows(pipeline_settings, db.dead_letters)
    assert (letter.source, letter.record_id) == (ledger.DeadLetterSource.MODEL, 2)
    assert "the model server refused record 2" in letter.reason
    assert "has an empty text" in letter.reason  # the server's own reason
    statuses = {
        row.record_id: row.status for row in rows(pipeline_settings, db.prediction_requests)
    }
    assert statuses == {
        1: ledger.RequestStatus.DONE,
        2: ledger.RequestStatus.DEAD_LETTERED,
        3: ledger.RequestStatus.DONE,
    }
    (batch,) = rows(pipeline_settings, db.prediction_batches)
    assert batch.status == ledger.BatchStatus.SUCCEEDED


def test_model_server_4xx_for_the_whole_request_dead_letters_without_retry(
    instance: DagsterInstance, pipeline_settings: Settings
) -> None:
    """A 4xx naming no instance (here 404: a wrong route) refuses the batch as a whole."""
    settings = pipeline_settings.model_copy(
        update={"model_url": f"{pipeline_settings.model_url}/no-such-route"}
    )
    local_feature_store(settings).upsert([(1, "my invoice is wrong")])
    publish_json(settings, [{"id": 1}])

    report = run_daemon_loop(instance, settings)

    assert len(report.runs) == 1
    assert not report.runs[0].success
    step_events = report.runs[0].all_node_events
    assert not any(event.event_type_value == "STEP_UP_FOR_RETRY" for event in step_events)
    (letter,) = rows(settings, db.dead_letters)
    assert "model server refused the batch" in letter.reason
    assert "404" in letter.reason
    (batch,) = rows(settings, db.prediction_batches)
    assert batch.status == ledger.BatchStatus.DEAD_LETTERED


def test_stale_batch_without_run_gets_a_new_run_request(
    instance: DagsterInstance, pipeline_settings: Settings
) -> None:
    """A tick that committed but died before its run requests were launched leaves a batch."""
    publish_json(pipeline_settings, [{"id": 1}])
    first = sensor_tick(instance, pipeline_settings)
    (lost,) = first.run_requests
    # The daemon died: no run was ever created. The partition is also missing.
    instance.delete_dynamic_partition(PREDICTION_BATCHES, lost.partition_key)
    queue = open_queue(pipeline_settings)
    try:
        outcome = process_tick(
            instance,
            resources_of(pipeline_settings)["ledger"],
            queue,
            feature_store=local_feature_store(pipeline_settings),
            lease_seconds=pipeline_settings.ack_deadline_seconds,
            stale_after=timedelta(0),
            recheck_after=timedelta(0),
        )
    finally:
        queue.close()
    assert [(r.partition_key, r.run_key) for r in outcome.run_requests] == [
        (lost.partition_key, f"{lost.partition_key}#2")
    ]
    assert instance.has_dynamic_partition(PREDICTION_BATCHES, lost.partition_key)


def test_an_unknown_id_waits_without_partitions_or_runs_and_is_predicted_after_an_import(
    instance: DagsterInstance, pipeline_settings: Settings
) -> None:
    """`publish '{"id": "1"}'` before record 1 exists: one run finds no features; while it waits
    the sensor looks it up without a partition or a run; an import wakes it at once."""
    settings = pipeline_settings
    publish_json(settings, [{"id": "1"}])
    first = sensor_tick(instance, settings)
    [result] = execute_runs(instance, settings, first.run_requests)
    assert result.success
    [request] = rows(settings, db.prediction_requests)
    assert request.status == ledger.RequestStatus.WAITING_FEATURES
    partitions = set(instance.get_dynamic_partitions(PREDICTION_BATCHES))
    runs = instance.get_runs_count()

    def tick(at: timedelta, *, features_changed: bool) -> TickOutcome:
        queue = open_queue(settings)
        try:
            return process_tick(
                instance,
                resources_of(settings)["ledger"],
                queue,
                feature_store=local_feature_store(settings),
                lease_seconds=settings.ack_deadline_seconds,
                features_changed=features_changed,
                clock=lambda: request.received_at + at,
            )
        finally:
            queue.close()

    # Backoff passed, still missing: looked up, but no batch, partition or run. The ticks are
    # less than FEATURE_WAIT_MAX_STEP apart, so all the time between them counts to the wait.
    for at in (timedelta(seconds=61), timedelta(seconds=121)):
        waiting = tick(at, features_changed=False)
        assert (waiting.run_requests, waiting.still_waiting) == ([], 1)
    assert set(instance.get_dynamic_partitions(PREDICTION_BATCHES)) == partitions
    assert instance.get_runs_count() == runs
    assert rows(settings, db.prediction_batches).__len__() == 1
    status = json.loads(run_cli(settings, "status").stdout)
    [shown] = status["waiting_for_features"]
    assert (shown["record_id"], shown["reason"]) == (1, ledger.WAITING_REASON)
    assert shown["dead_letter_at"] == (request.received_at + timedelta(seconds=600)).isoformat()
    letters = [json.loads(line) for line in run_cli(settings, "dead-letters").stdout.splitlines()]
    assert [letter["waiting"]["record_id"] for letter in letters] == [1]

    # The record is added and imported (from Dagster here; the CLI reports the same event).
    add_records(engine_of(settings), ["I was charged twice, please refund"])
    resources = resources_of(settings)
    assert materialize([features, data_points], instance=instance, resources=resources).success
    newest = newest_features_materialization(instance)
    woken = tick(timedelta(seconds=122), features_changed=newest is not None)
    assert len(woken.run_requests) == 1  # before its backoff (122 s < 121 s + 20 s)
    [predicted] = execute_runs(instance, settings, woken.run_requests)
    assert predicted.success
    [done] = rows(settings, db.prediction_requests)
    assert done.status == ledger.RequestStatus.DONE
    assert len(rows(settings, db.predictions)) == 1
