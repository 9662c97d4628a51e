"""The stop of ``make run`` tags the runs it interrupts, and the sensor's reconcile, reading a
real Dagster instance, retries their batches without charging the attempt.

A canceled run looks the same whether ``make run`` was stopped, a user canceled it in the UI or
it failed; only the tag (``STOPPED_BY_TAG``, written by ``batchinfer_tools.run`` before it
stops anything) tells them apart, so the tests put runs of every status beside the tagged ones.
"""

from __future__ import annotations

import io
from datetime import timedelta
from pathlib import Path

import pytest
from dagster import DagsterInstance, DagsterRunStatus
from dagster._core.test_utils import create_run_for_test

from batchinfer_dagster import db, ledger
from batchinfer_dagster.defs.sensors import (
    PARTITION_TAG,
    RUN_KEY_TAG,
    STOPPED_BY_TAG,
    run_key,
)
from batchinfer_dagster.settings import Settings
from batchinfer_testing.daemon import sensor_tick, tick_at
from batchinfer_testing.deployment import (
    engine_of,
    publish_json,
    rows,
)
from batchinfer_tools import run

RECHECK = timedelta(seconds=15)  # past RECHECK_AFTER (10 s), well inside STALE_AFTER (2 min)
S = DagsterRunStatus


@pytest.fixture
def home_instance(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> DagsterInstance:
    """The instance of a fresh ``DAGSTER_HOME``, the one ``make run``'s stop opens."""
    home = tmp_path / "dagster"
    home.mkdir()
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    with DagsterInstance.get() as instance:
        yield instance


def test_the_stop_tags_the_runs_in_flight_and_no_other(home_instance: DagsterInstance) -> None:
    # Every status but QUEUED (a queued run needs a code location to be created).
    statuses = [status for status in S if status is not S.QUEUED]
    runs = {status: create_run_for_test(home_instance, status=status) for status in statuses}
    in_flight = {runs[S.STARTING].run_id, runs[S.STARTED].run_id}

    assert set(run.tag_runs_in_flight()) == in_flight

    tags = {status: home_instance.get_run_by_id(r.run_id).tags for status, r in runs.items()}
    tagged = {status for status, tag in tags.items() if tag.get(STOPPED_BY_TAG) == run.STOPPED_BY}
    assert tagged == {S.STARTING, S.STARTED}


def test_a_run_the_stop_cannot_cancel_keeps_its_tag(home_instance: DagsterInstance) -> None:
    """No run worker or code server answers here: the cancel is refused or fails, and the run
    is tagged all the same (the SIGINT that follows ends it)."""
    started = create_run_for_test(home_instance, status=S.STARTED)
    relay = run.Relay(io.BytesIO(), io.BytesIO())

    assert run.cancel_runs_in_flight(relay) == [started.run_id]

    tags = home_instance.get_run_by_id(started.run_id).tags
    assert tags[STOPPED_BY_TAG] == run.STOPPED_BY
    assert started.run_id in relay.log.getvalue().decode()


def test_an_interrupted_run_costs_its_batch_no_attempt(
    instance: DagsterInstance, app_settings: Settings
) -> None:
    """One attempt allowed: two batches whose first runs were canceled; the one the stop
    tagged is retried (attempt 2, 1 uncharged), the other is out of attempts."""
    settings = app_settings.model_copy(update={"max_attempts": 1})
    engine = engine_of(settings)
    keys = []
    for record_id in (1, 2):
        publish_json(settings, [{"id": record_id}])
        [request] = sensor_tick(instance, settings).run_requests
        keys.append(request.partition_key)
    stopped, canceled = keys
    started = db.utcnow()
    for key in keys:
        dagster_run = create_run_for_test(
            instance,
            status=S.STARTED,
            tags={PARTITION_TAG: key, RUN_KEY_TAG: run_key(key, 1)},
        )
        ledger.start_batch(engine, key, run_id=dagster_run.run_id, now=started)
        if key == stopped:
            assert run.tag_in_flight(instance) == [dagster_run.run_id]
        instance.report_run_canceled(dagster_run)

    outcome = tick_at(instance, settings, started + RECHECK)

    assert outcome.retried == {stopped: 2}
    assert outcome.dead_lettered == [canceled]
    assert [(r.partition_key, r.run_key) for r in outcome.run_requests] == [
        (stopped, f"{stopped}#2")
    ]
    table = db.prediction_batches
    [row] = rows(settings, table, table.c.batch_key == stopped)
    assert (row.status, row.attempts, row.uncharged_attempts) == (ledger.BatchStatus.QUEUED, 2, 1)
