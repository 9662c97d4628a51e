"""The code location's sensor and predictions job, in process, on the in-memory fakes.

The sensor definition and the job are the real ones (``sensor_tick``, ``execute_runs``); only the
three external systems are swapped through ``resources=``, as the fast tier does everywhere.
"""

from __future__ import annotations

from dagster import DagsterInstance

from batchinfer_dagster import db
from batchinfer_dagster.settings import Settings
from batchinfer_testing.daemon import execute_runs, sensor_tick
from batchinfer_testing.deployment import rows
from batchinfer_testing.fakes.resources import fast_resources


def test_a_published_request_is_predicted_and_checked(fast_settings: Settings) -> None:
    resources = fast_resources(fast_settings, "pipeline")
    fakes = {key: resources[key] for key in ("request_queue", "feature_store", "model_server")}
    resources["feature_store"].fake().add({1: "refund please", 2: "app crashes"})
    resources["feature_store"].fake().import_records()
    resources["request_queue"].fake().publish([b'{"id": "1"}', b'{"id": 2}'])
    instance = DagsterInstance.ephemeral()

    tick = sensor_tick(instance, fast_settings, **fakes)
    results = execute_runs(instance, fast_settings, tick.run_requests, **fakes)

    assert [result.success for result in results] == [True]
    checks = results[0].get_asset_check_evaluations()
    assert [check.check_name for check in checks if not check.passed] == []
    assert {check.check_name for check in checks} >= {
        "labels_are_the_configured_labels",
        "one_prediction_per_record",
        "scores_sum_to_one",
    }
    stored = rows(fast_settings, db.predictions)
    assert sorted((row.record_id, row.model) for row in stored) == [
        (1, "scripted"),
        (2, "scripted"),
    ]
    assert resources["request_queue"].fake().depth() == 0


def test_a_transient_model_failure_is_retried_within_the_run(fast_settings: Settings) -> None:
    """One scripted failure, one step retry (BATCHINFER_MODEL_RETRIES=1, no delay): success."""
    settings = fast_settings.model_copy(update={"model_retries": 1, "model_retry_delay_seconds": 0})
    resources = fast_resources(settings, "retry")
    fakes = {key: resources[key] for key in ("request_queue", "feature_store", "model_server")}
    resources["feature_store"].fake().add({1: "refund please"})
    resources["feature_store"].fake().import_records()
    resources["model_server"].fake().transient_failures = 1
    resources["request_queue"].fake().publish([b'{"id": "1"}'])
    instance = DagsterInstance.ephemeral()

    tick = sensor_tick(instance, settings, **fakes)
    [result] = execute_runs(instance, settings, tick.run_requests, **fakes)

    assert result.success
    assert len(resources["model_server"].fake().requests) == 2  # the failure, then the answer
    assert [row.record_id for row in rows(settings, db.predictions)] == [1]
