"""The three assets of design §1 and the resource that gives them settings and clients.

``data_points`` observes the records table, ``feature_store`` imports it into the feature store,
and ``predictions`` (one dynamic partition per request batch) predicts a batch's records.
"""

import json
import random
import time
from datetime import timedelta
from typing import Any, Self

import sqlalchemy as sa
from dagster import (
    AssetExecutionContext,
    ConfigurableResource,
    DataVersion,
    Failure,
    MaterializeResult,
    MetadataValue,
    RetryRequested,
    asset,
)
from pydantic import Field
from sqlalchemy import Engine

from batchinfer_dagster import db, ledger
from batchinfer_dagster.checks import PREDICTION_CHECK_SPECS, prediction_check_results
from batchinfer_dagster.partitions import prediction_batches
from batchinfer_dagster.resources.feature_store import FeatureStore, build_feature_store
from batchinfer_dagster.resources.model_client import (
    ModelClient,
    ModelRequestError,
    TransientModelError,
    build_model_client,
    parameters_of,
)
from batchinfer_dagster.resources.queue import RequestQueue, build_queue
from batchinfer_dagster.settings import Settings

GROUP = "batchinfer"
SAMPLE_ROWS = 5


def retry_delay(first_delay: float, retry_number: int) -> float:
    """Exponential backoff with ±50 % jitter, so retrying runs do not hit the server together."""
    return first_delay * 2**retry_number * random.uniform(0.5, 1.5)


class BatchinferResource(ConfigurableResource):
    """The one ``Settings`` of the code location, and the engine and clients built from it.

    Dagster config must be serializable, so explicit settings travel as a JSON object of
    ``Settings`` fields that win over the ``BATCHINFER_*`` environment; production leaves it empty
    and is configured by the environment alone (resource config shows in the UI: no passwords).
    """

    settings_json: str = Field(
        default="{}",
        description="JSON object of Settings fields that override BATCHINFER_* variables.",
    )
    model_retries: int = Field(
        default=3,
        ge=0,
        description="Step retries of a predictions run after a transient model error "
        "(server down, 5xx, timeout). A 4xx is never retried.",
    )
    model_retry_delay_seconds: float = Field(
        default=5.0, ge=0, description="Wait before the first retry; doubles each retry."
    )

    @classmethod
    def for_settings(cls, settings: Settings, **fields: Any) -> Self:
        """A resource that gives exactly ``settings`` (tests, benchmarks, the CLI)."""
        return cls(settings_json=settings.model_dump_json(), **fields)

    def get_settings(self) -> Settings:
        overrides = json.loads(self.settings_json)
        if not isinstance(overrides, dict):
            raise ValueError(
                "BatchinferResource.settings_json must be a JSON object of Settings fields, "
                f"got {self.settings_json!r}"
            )
        return Settings(**overrides)

    def get_engine(self) -> Engine:
        return db.get_engine(self.get_settings())

    def get_queue(self) -> RequestQueue:
        return build_queue(self.get_settings())

    def get_feature_store(self) -> FeatureStore:
        return build_feature_store(self.get_settings())

    def get_model_client(self) -> ModelClient:
        return build_model_client(self.get_settings())


def _records_summary(engine: Engine) -> tuple[int, int | None, list[tuple[int, str]]]:
    table = db.data_points
    with engine.connect() as connection:
        count, newest = connection.execute(
            sa.select(sa.func.count(), sa.func.max(table.c.id))
        ).one()
        sample = connection.execute(
            sa.select(table.c.id, table.c.text).order_by(table.c.id.desc()).limit(SAMPLE_ROWS)
        ).all()
    return count, newest, [(row.id, row.text) for row in sample]


def _markdown_table(rows: list[tuple[int, str]]) -> str:
    lines = ["| id | text |", "|---|---|"]
    lines += [f"| {record_id} | {text[:200].replace('|', '/')} |" for record_id, text in rows]
    return "\n".join(lines)


@asset(group_name=GROUP)
def data_points(
    context: AssetExecutionContext, batchinfer: BatchinferResource
) -> MaterializeResult:
    """The records table, written by ``batchinfer add-data-point`` or a loader.

    Materializing only observes it (count, newest id, newest rows), so the UI shows what the
    feature store import will see; its data version changes when records are added.
    """
    count, newest, sample = _records_summary(batchinfer.get_engine())
    context.log.info("data_points holds %d records, newest id %s", count, newest)
    return MaterializeResult(
        metadata={
            "records": count,
            "newest_id": MetadataValue.int(newest or 0),
            "sample": MetadataValue.md(_markdown_table(sample)),
        },
        data_version=DataVersion(f"{count}:{newest}"),
    )


@asset(group_name=GROUP, deps=[data_points])
def feature_store(
    context: AssetExecutionContext, batchinfer: BatchinferResource
) -> MaterializeResult:
    """Import every record into the feature store, where prediction runs read their texts."""
    started = time.perf_counter()
    result = batchinfer.get_feature_store().import_records()
    duration = time.perf_counter() - started
    context.log.info(
        "imported %d rows in %.1f s; the store holds %d records",
        result.rows_imported,
        duration,
        result.total_records,
    )
    metadata: dict[str, object] = {
        "rows_imported": result.rows_imported,
        "total_records": result.total_records,
        "duration_s": MetadataValue.float(round(duration, 3)),
    }
    if result.details:
        metadata["details"] = MetadataValue.json(
            json.loads(json.dumps(result.details, default=str))
        )
    return MaterializeResult(metadata=metadata)


def outcome_metadata(outcome: ledger.BatchOutcome) -> dict[str, object]:
    predicted = len(outcome.predicted)
    rate = predicted / outcome.model_seconds if outcome.model_seconds > 0 else 0.0
    return {
        "requests": outcome.requests,
        "records": outcome.records,
        "predicted": predicted,
        "waiting_features": outcome.waiting,
        "dead_lettered": outcome.dead_lettered,
        "refused_by_model": outcome.refused,
        "model_latency_s": MetadataValue.float(round(outcome.model_seconds, 3)),
        "texts_per_second": MetadataValue.float(round(rate, 1)),
        "label_distribution": MetadataValue.json(outcome.label_counts),
    }


@asset(
    group_name=GROUP,
    deps=[feature_store],
    partitions_def=prediction_batches,
    pool="model_server",
    check_specs=PREDICTION_CHECK_SPECS,
)
def predictions(
    context: AssetExecutionContext, batchinfer: BatchinferResource
) -> MaterializeResult:
    """One prediction row per record of a request batch, upserted on (record_id, model).

    Re-materializing a partition recomputes the batch idempotently. Only transient model errors
    are retried within the run, by ``RetryRequested`` with the resource's backoff (a static
    ``RetryPolicy`` would also retry bugs and database errors, which the sensor's reconcile
    handles); a 4xx will not get better, so the batch's requests become dead letters at once.
    """
    settings = batchinfer.get_settings()
    engine = db.get_engine(settings)
    try:
        outcome = predict_with_settings(settings, context.partition_key, context.run.run_id)
    except TransientModelError as exc:
        delay = retry_delay(batchinfer.model_retry_delay_seconds, context.retry_number)
        context.log.warning("transient model error, retry in %.1f s: %s", delay, exc)
        raise RetryRequested(max_retries=batchinfer.model_retries, seconds_to_wait=delay) from exc
    context.log.info(
        "batch %s: %d requests, %d records predicted, %d waiting for features, %d dead letters",
        outcome.batch_key,
        outcome.requests,
        len(outcome.predicted),
        outcome.waiting,
        outcome.dead_lettered,
    )
    return MaterializeResult(
        metadata=outcome_metadata(outcome),
        check_results=prediction_check_results(
            engine,
            outcome.batch_key,
            model_name=settings.model_name,
            labels=settings.labels,
            multi_label=settings.multi_label,
        ),
    )


def predict_with_settings(settings: Settings, batch_key: str, run_id: str) -> ledger.BatchOutcome:
    """Run ``ledger.predict_batch`` with the configured clients, recording failures in the ledger.

    Shared by the ``predictions`` asset and ``predict_records_job``.
    """
    engine = db.get_engine(settings)
    client = build_model_client(settings)
    try:
        return ledger.predict_batch(
            engine,
            build_feature_store(settings),
            client,
            parameters_of(settings),
            model_name=settings.model_name,
            batch_key=batch_key,
            run_id=run_id,
            feature_wait=timedelta(seconds=settings.feature_wait_seconds),
        )
    except ModelRequestError as exc:
        reason = f"model server refused the batch: {exc}"
        dead = ledger.dead_letter_batch(engine, batch_key, reason=reason, now=db.utcnow())
        raise Failure(
            description=f"batch {batch_key}: {reason}",
            metadata={"dead_lettered": dead},
            allow_retries=False,
        ) from exc
    except Exception as exc:
        ledger.fail_batch(engine, batch_key, error=f"{type(exc).__name__}: {exc}", now=db.utcnow())
        raise
    finally:
        client.close()
