"""Reconcile acts on what Dagster knows (the sensor's query of its instance, real ledger):
a batch whose run ended without settling it (Ctrl-C on `make run`: canceled or failed) is
retried at the next look, while the staleness window only covers runs that were never created,
and a run still in flight is never doubled."""

from __future__ import annotations

from datetime import timedelta

import pytest
from dagster import DagsterInstance, DagsterRunStatus
from dagster._core.test_utils import create_run_for_test

from batchinfer_dagster import db, ledger
from batchinfer_dagster.defs.sensors import (
    PARTITION_TAG,
    RUN_KEY_TAG,
    run_key,
)
from batchinfer_dagster.settings import Settings
from batchinfer_testing.daemon import sensor_tick, tick_at
from batchinfer_testing.deployment import (
    engine_of,
    publish_json,
)

RECHECK = timedelta(seconds=15)  # past RECHECK_AFTER (10 s), well inside STALE_AFTER (2 min)


def one_batch(instance: DagsterInstance, settings: Settings) -> str:
    publish_json(settings, [{"id": 1}])
    [request] = sensor_tick(instance, settings).run_requests
    assert request.partition_key is not None
    return request.partition_key


@pytest.mark.parametrize("ended", [DagsterRunStatus.CANCELED, DagsterRunStatus.FAILURE])
def test_a_batch_whose_run_ended_unsettled_is_retried_at_once(
    instance: DagsterInstance, app_settings: Settings, ended: DagsterRunStatus
) -> None:
    key = one_batch(instance, app_settings)
    run = create_run_for_test(
        instance,
        status=DagsterRunStatus.STARTED,
        tags={PARTITION_TAG: key, RUN_KEY_TAG: run_key(key, 1)},
    )
    started = db.utcnow()
    ledger.start_batch(engine_of(app_settings), key, run_id=run.run_id, now=started)

    # In flight: left alone, even past the staleness window.
    late = tick_at(instance, app_settings, started + timedelta(minutes=5))
    assert late.retried == {}

    # The run was interrupted (Ctrl-C): Dagster knows it ended; the ledger still says running.
    if ended is DagsterRunStatus.CANCELED:
        instance.report_run_canceled(run)
    else:
        instance.report_run_failed(run)
    assert instance.get_run_by_id(run.run_id).status is ended
    at_once = tick_at(instance, app_settings, started + timedelta(minutes=5) + RECHECK)
    assert at_once.retried == {key: 2}
    assert [(r.partition_key, r.run_key) for r in at_once.run_requests] == [(key, f"{key}#2")]


def test_a_run_never_created_waits_for_the_staleness_window(
    instance: DagsterInstance, app_settings: Settings
) -> None:
    key = one_batch(instance, app_settings)  # its run request never reached Dagster
    [batch] = list(
        ledger.batches_to_reconcile(
            engine_of(app_settings), now=db.utcnow() + RECHECK, recheck_after=RECHECK, limit=10
        )
    )
    written = batch.updated_at
    # The two-minute window is credited look by look, each gap at most one minute (half of it):
    # RECHECK, then an hour's jump (a clock stepped forward) credits 60 s, then what makes 119 s.
    jump = RECHECK + timedelta(hours=1)
    looks = [RECHECK, jump, jump + timedelta(seconds=119 - 60) - RECHECK]
    for look in looks:
        assert tick_at(instance, app_settings, written + look).retried == {}
    # RECHECK more: 119 s + RECHECK without a run, past the window.
    last = written + looks[-1] + RECHECK
    assert tick_at(instance, app_settings, last).retried == {key: 2}


def test_a_new_attempt_is_not_judged_by_the_previous_attempts_run(
    instance: DagsterInstance, app_settings: Settings
) -> None:
    """Attempt 2 was requested; its run is not created yet, attempt 1's run failed: no attempt 3."""
    key = one_batch(instance, app_settings)
    create_run_for_test(
        instance,
        status=DagsterRunStatus.FAILURE,
        tags={PARTITION_TAG: key, RUN_KEY_TAG: run_key(key, 1)},
    )
    now = db.utcnow()
    assert ledger.count_attempt(engine_of(app_settings), [key], now=now) == {key: 2}
    assert tick_at(instance, app_settings, now + RECHECK).retried == {}
