"""The ``predictions`` checks say when a partition predicted nothing, instead of a green one.

A batch whose only request waits for its record's features materializes (nothing failed) with
0 predicted: its ``records_predicted`` check is a warning. The model is never called for it, so
no model server is needed. A batch with predictions passes it: ``test_end_to_end``'s
request_predictions_job asserts every check passed.
"""

from __future__ import annotations

from datetime import UTC, datetime

from dagster import AssetCheckSeverity, DagsterInstance, RunRequest

from batchinfer_dagster import ledger
from batchinfer_dagster.clients.queue import ReceivedMessage
from batchinfer_dagster.defs.checks import RECORDS_PREDICTED
from batchinfer_dagster.defs.partitions import PREDICTION_BATCHES
from batchinfer_dagster.settings import Settings
from batchinfer_testing.daemon import execute_runs
from batchinfer_testing.deployment import engine_of

RECEIVED = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def test_a_partition_that_predicted_nothing_warns(
    instance: DagsterInstance, app_settings: Settings
) -> None:
    engine = engine_of(app_settings)
    message = ReceivedMessage("1", "ack-1", b'{"id": 42}', 1, RECEIVED)
    [batch_key] = ledger.ingest_messages(
        engine, [message], queue="local", batch_size=8, now=RECEIVED
    ).batch_keys
    instance.add_dynamic_partitions(PREDICTION_BATCHES, [batch_key])
    settings = app_settings.model_copy(update={"model_url": "http://127.0.0.1:9"})

    (run,) = execute_runs(instance, settings, [RunRequest(partition_key=batch_key)])

    assert run.success
    evaluations = {e.check_name: e for e in run.get_asset_check_evaluations()}
    warning = evaluations[RECORDS_PREDICTED]
    assert not warning.passed
    assert warning.severity == AssetCheckSeverity.WARN
    assert warning.metadata["predicted"].value == 0
    # The other checks have nothing to fail on: the warning is the one that tells.
    assert [name for name, e in evaluations.items() if not e.passed] == [RECORDS_PREDICTED]
