"""Asset checks of a ``predictions`` partition, evaluated on the rows the run stored.

They run inside the materialization (``check_specs``) because they need the partition's batch key
and read the same few hundred rows the run just wrote; a separate check step per partition would
cost a step launch per batch for nothing.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from dagster import AssetCheckResult, AssetCheckSeverity, AssetCheckSpec
from sqlalchemy import Engine

from batchinfer_dagster import ledger
from batchinfer_protocol.zero_shot import Prediction

PREDICTIONS_ASSET = "predictions"
SCORE_TOLERANCE = 1e-4
SAMPLE = 10

ONE_PER_RECORD = "one_prediction_per_record"
SCORES_SUM_TO_ONE = "scores_sum_to_one"
LABELS_ARE_CONFIGURED = "labels_are_the_configured_labels"
RECORDS_PREDICTED = "records_predicted"

PREDICTION_CHECK_SPECS = [
    AssetCheckSpec(
        ONE_PER_RECORD,
        asset=PREDICTIONS_ASSET,
        description="Every record of the batch's done requests has exactly one prediction row.",
    ),
    AssetCheckSpec(
        SCORES_SUM_TO_ONE,
        asset=PREDICTIONS_ASSET,
        description=f"Scores sum to 1 (±{SCORE_TOLERANCE}) unless predictions are multi-label.",
    ),
    AssetCheckSpec(
        LABELS_ARE_CONFIGURED,
        asset=PREDICTIONS_ASSET,
        description="Each prediction's labels are a permutation of BATCHINFER_LABELS.",
    ),
    AssetCheckSpec(
        RECORDS_PREDICTED,
        asset=PREDICTIONS_ASSET,
        description="The batch predicted at least one record. A warning when it predicted none "
        "(its requests wait for features, were refused or dead-lettered: the partition's "
        "metadata counts each, `batchinfer dead-letters` lists them), so an empty partition "
        "does not look like a green one.",
    ),
]


def _one_per_record(record_ids: Sequence[int], stored: dict[int, Prediction]) -> AssetCheckResult:
    missing = [record_id for record_id in record_ids if record_id not in stored]
    return AssetCheckResult(
        check_name=ONE_PER_RECORD,
        asset_key=PREDICTIONS_ASSET,
        passed=not missing,
        severity=AssetCheckSeverity.ERROR,
        metadata={"records": len(record_ids), "missing": len(missing), "sample": missing[:SAMPLE]},
    )


def _scores_sum_to_one(stored: dict[int, Prediction], multi_label: bool) -> AssetCheckResult:
    if multi_label:
        return AssetCheckResult(
            check_name=SCORES_SUM_TO_ONE,
            asset_key=PREDICTIONS_ASSET,
            passed=True,
            metadata={"skipped": "multi-label scores are independent"},
        )
    bad = [
        record_id
        for record_id, prediction in stored.items()
        if abs(sum(prediction.scores) - 1.0) > SCORE_TOLERANCE
    ]
    return AssetCheckResult(
        check_name=SCORES_SUM_TO_ONE,
        asset_key=PREDICTIONS_ASSET,
        passed=not bad,
        metadata={"checked": len(stored), "failing": len(bad), "sample": bad[:SAMPLE]},
    )


def _labels_are_configured(
    stored: dict[int, Prediction], labels: Sequence[str]
) -> AssetCheckResult:
    expected = Counter(labels)
    bad = [
        record_id
        for record_id, prediction in stored.items()
        if Counter(prediction.labels) != expected or len(prediction.scores) != len(labels)
    ]
    return AssetCheckResult(
        check_name=LABELS_ARE_CONFIGURED,
        asset_key=PREDICTIONS_ASSET,
        passed=not bad,
        metadata={"labels": list(labels), "failing": len(bad), "sample": bad[:SAMPLE]},
    )


def _records_predicted(stored: dict[int, Prediction]) -> AssetCheckResult:
    return AssetCheckResult(
        check_name=RECORDS_PREDICTED,
        asset_key=PREDICTIONS_ASSET,
        passed=bool(stored),
        severity=AssetCheckSeverity.WARN,
        metadata={"predicted": len(stored)},
    )


def prediction_check_results(
    engine: Engine,
    batch_key: str,
    *,
    model: str,
    labels: Sequence[str],
    multi_label: bool,
    rollout: str = "",
) -> list[AssetCheckResult]:
    """The four checks of one batch, read back from the rows of ``model`` (the served model):
    the current rows, or for a rollout's batch the candidate's (``rollout``, its digest)."""
    record_ids = ledger.batch_record_ids(engine, batch_key)
    stored = ledger.read_predictions(engine, record_ids, model_name=model, configuration=rollout)
    return [
        _one_per_record(record_ids, stored),
        _scores_sum_to_one(stored, multi_label),
        _labels_are_configured(stored, labels),
        _records_predicted(stored),
    ]
