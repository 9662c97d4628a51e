"""Where a request's time goes between its publish and its prediction: one timeline per run.

Read after an arm's ``dg dev`` has stopped, from the arm's app database and Dagster home, for
the batches holding the requests of each publish. Each stage is in seconds after that publish:

- ``closed``: the ledger wrote the batch (``prediction_batches.created_at``): intake and the
  closing rule;
- ``run created``: Dagster created its run (the run record's ``create_timestamp``): the
  sensor's tick ending and the daemon submitting its run request;
- ``step started``: the predictions step began (its ``STEP_START`` event): the run queue, the
  run worker's start-up and the code's imports;
- ``model from`` / ``model s``: when the first model call began (the materialization's
  ``model_started_at``) and the model server's seconds for the batch (``model_latency_s``);
- ``upserted``: the batch's last prediction row was written (``max(predictions.updated_at)``),
  after which ``batchinfer prediction`` reads it.

``runs`` counts the batch's runs: more than one means its first run failed (all its step
retries) and the stages are those of the last run, relaunched by the sensor's reconcile.

Only the tables, columns and metadata both arms of ``bench_first_hour`` have are read, with
plain SQL, so a baseline tree's database is read by this tree's code.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa
from dagster import DagsterEventType, DagsterInstance, RunsFilter
from dagster._core.instance.ref import InstanceRef

from batchinfer_dagster.settings import Settings

PARTITION_TAG = "dagster/partition"
STAGES = (
    "runs",
    "closed",
    "run_created",
    "step_started",
    "model_from",
    "model_seconds",
    "upserted",
)
STAGE_HEADINGS = (
    "runs",
    "closed",
    "run created",
    "step started",
    "model from",
    "model s",
    "upserted",
)


@dataclass(frozen=True)
class Publish:
    """Requests for ``record_ids`` published at ``at`` (Unix seconds)."""

    at: float
    record_ids: range


@dataclass(frozen=True)
class Timeline:
    """One batch's run, its stages in seconds after its requests' publish (``None``: not seen,
    e.g. a metadata key the arm's code does not write)."""

    batch_key: str
    requests: int
    runs: int
    closed: float
    run_created: float | None
    step_started: float | None
    model_from: float | None
    model_seconds: float | None
    upserted: float | None

    def cells(self) -> list[str]:
        return [_seconds(getattr(self, stage)) for stage in STAGES]


def _seconds(value: float | None) -> str:
    if isinstance(value, int):
        return str(value)
    return "—" if value is None else f"{value:.1f}"


def _unix(value: datetime | str) -> float:
    """A timestamp read by plain SQL (SQLite gives text) as Unix seconds; naive means UTC."""
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def run_timelines(home: Path, publishes: Sequence[Publish]) -> list[Timeline]:
    """The timeline of every batch that holds requests of ``publishes``, oldest batch first,
    from the arm's ``home`` (app database and ``home/dagster``)."""
    engine = sa.create_engine(Settings(home=home).resolved_database_url)
    timelines: list[Timeline] = []
    try:
        with (
            engine.connect() as connection,
            DagsterInstance.from_ref(InstanceRef.from_dir(str(home / "dagster"))) as instance,
        ):
            for publish in publishes:
                batches = connection.execute(
                    sa.text(
                        "SELECT r.batch_key, count(*), min(b.created_at) FROM prediction_requests r"
                        " JOIN prediction_batches b ON b.batch_key = r.batch_key"
                        " WHERE r.record_id BETWEEN :first AND :last"
                        " GROUP BY r.batch_key ORDER BY min(b.created_at)"
                    ),
                    {"first": publish.record_ids.start, "last": publish.record_ids.stop - 1},
                ).all()
                for batch_key, requests, created_at in batches:
                    upserted = connection.execute(
                        sa.text("SELECT max(updated_at) FROM predictions WHERE batch_key = :key"),
                        {"key": batch_key},
                    ).scalar_one()
                    timelines.append(
                        _timeline(instance, publish.at, batch_key, requests, created_at, upserted)
                    )
    finally:
        engine.dispose()
    return timelines


def _timeline(
    instance: DagsterInstance,
    published: float,
    batch_key: str,
    requests: int,
    created_at: datetime | str,
    upserted: datetime | str | None,
) -> Timeline:
    """The batch's stages; its run is the last one of its partition (a retry's, if any)."""
    records = instance.get_run_records(
        RunsFilter(tags={PARTITION_TAG: batch_key}), order_by="create_timestamp", ascending=True
    )
    run_created = step_started = model_from = model_seconds = None
    if records:
        record = records[-1]
        run_created = record.create_timestamp.timestamp() - published
        run_id = record.dagster_run.run_id
        steps = instance.all_logs(run_id, of_type=DagsterEventType.STEP_START)
        if steps:
            step_started = steps[0].timestamp - published
        for entry in instance.all_logs(run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION):
            materialization = entry.asset_materialization
            metadata = materialization.metadata if materialization else {}
            if "model_latency_s" in metadata:
                model_seconds = float(metadata["model_latency_s"].value)
                if "model_started_at" in metadata:
                    model_from = float(metadata["model_started_at"].value) - published
    return Timeline(
        batch_key=batch_key,
        requests=requests,
        runs=len(records),
        closed=_unix(created_at) - published,
        run_created=run_created,
        step_started=step_started,
        model_from=model_from,
        model_seconds=model_seconds,
        upserted=None if upserted is None else _unix(upserted) - published,
    )


def median_timeline(timelines: Sequence[Timeline]) -> list[str]:
    """Each stage's median over ``timelines`` (the single requests, one batch each)."""
    cells = []
    for stage in STAGES:
        values = [v for t in timelines if (v := getattr(t, stage)) is not None]
        cells.append(_seconds(statistics.median(values) if values else None))
    return cells


def markdown_rows(label: str, timelines: Sequence[Timeline]) -> list[str]:
    """One table row per batch: ``label``, its size, then its stages."""
    return [f"| {label} | {t.requests:,} | " + " | ".join(t.cells()) + " |" for t in timelines]
