"""The Dagster daemon's part around the sensor, in-process: the one daemon loop of the tests.

Each tick evaluates the real ``prediction_requests_sensor`` with ``build_sensor_context`` and
launches, in-process on the same instance, every run request whose run key has no run yet (the
daemon's run-key deduplication), tagged as the daemon tags them. The loop ends when a tick asks
for nothing and, with ``expect``, the ledger holds that many settled requests.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from dagster import (
    DagsterEventType,
    DagsterInstance,
    ExecuteInProcessResult,
    RunRequest,
    RunsFilter,
    SensorResult,
    build_sensor_context,
)

from batchinfer_dagster import db, ledger
from batchinfer_dagster.definitions import build_definitions
from batchinfer_dagster.defs.sensors import TickOutcome, prediction_requests_sensor, process_tick
from batchinfer_dagster.settings import Settings
from batchinfer_testing.deployment import engine_of, local_feature_store, open_queue, resources_of

RUN_KEY_TAG = "dagster/run_key"


def tick_at(instance: DagsterInstance, settings: Settings, now: datetime) -> TickOutcome:
    """One tick of the sensor's work (``process_tick``) with its clock at ``now``, on the
    settings' ledger, queue and feature store: what a test of a deadline (reconcile's recheck
    and staleness bounds) drives."""
    queue = open_queue(settings)
    try:
        return process_tick(
            instance,
            resources_of(settings)["ledger"],
            queue,
            feature_store=local_feature_store(settings),
            lease_seconds=settings.ack_deadline_seconds,
            clock=lambda: now,
        )
    finally:
        queue.close()


def sensor_tick(instance: DagsterInstance, settings: Settings, **overrides: Any) -> SensorResult:
    """Evaluate the real sensor definition once, as the daemon would."""
    resources = resources_of(settings, **overrides)
    with build_sensor_context(instance=instance, resources=resources) as context:
        result = prediction_requests_sensor(context)
    if not isinstance(result, SensorResult):
        raise TypeError(f"the sensor returned {result!r}, not a SensorResult")
    return result


def execute_runs(
    instance: DagsterInstance,
    settings: Settings,
    run_requests: Sequence[RunRequest],
    run_config: Mapping[str, Any] | None = None,
    **overrides: Any,
) -> list[ExecuteInProcessResult]:
    """Launch run requests in-process, tagged like the daemon tags them."""
    job = build_definitions(resources_of(settings, **overrides)).resolve_job_def("predictions_job")
    return [
        job.execute_in_process(
            partition_key=request.partition_key,
            instance=instance,
            run_config=run_config,
            tags={RUN_KEY_TAG: request.run_key or "", **request.tags},
            raise_on_error=False,
        )
        for request in run_requests
    ]


def ledger_settled(settings: Settings, expect: int) -> bool:
    """At least ``expect`` requests in the ledger, all in a final status, all batches too."""
    table = db.prediction_requests
    batches = db.prediction_batches
    with engine_of(settings).connect() as connection:
        statuses = dict(
            connection.execute(
                sa.select(table.c.status, sa.func.count()).group_by(table.c.status)
            ).all()
        )
        open_batches = connection.execute(
            sa.select(sa.func.count()).where(
                batches.c.status.not_in(
                    [ledger.BatchStatus.SUCCEEDED, ledger.BatchStatus.DEAD_LETTERED]
                )
            )
        ).scalar_one()
    final = statuses.get(ledger.RequestStatus.DONE, 0) + statuses.get(
        ledger.RequestStatus.DEAD_LETTERED, 0
    )
    return final >= expect and final == sum(statuses.values()) and open_batches == 0


@dataclass
class LoopReport:
    ticks: int = 0
    runs: list[ExecuteInProcessResult] = field(default_factory=list)
    # Steps retried inside a run after a transient model error (RetryRequested).
    step_retries: int = 0
    longest_tick_s: float = 0.0
    run_keys: list[str] = field(default_factory=list)

    @property
    def failed_runs(self) -> int:
        return sum(not run.success for run in self.runs)


def _new_run_requests(
    instance: DagsterInstance, requests: Sequence[RunRequest]
) -> list[RunRequest]:
    return [
        request
        for request in requests
        if not instance.get_run_records(
            RunsFilter(tags={RUN_KEY_TAG: request.run_key or ""}), limit=1
        )
    ]


def run_daemon_loop(
    instance: DagsterInstance,
    settings: Settings,
    *,
    expect: int | None = None,
    max_ticks: int = 10_000,
    max_seconds: float = 240,
    sensor_overrides: Mapping[str, Any] | None = None,
    run_config: Mapping[str, Any] | None = None,
    **overrides: Any,
) -> LoopReport:
    """Tick and launch new run keys until a tick asks for nothing (and ``expect`` settled).

    ``max_ticks`` and ``max_seconds`` only stop a loop that would never end (the test's
    assertions then fail); ``sensor_overrides`` swap resources of the sensor alone (a faulty
    queue), ``overrides`` those of sensor and runs.
    """
    report = LoopReport()
    deadline = time.monotonic() + max_seconds
    sensor_resources = {**overrides, **(sensor_overrides or {})}
    while report.ticks < max_ticks and time.monotonic() < deadline:
        started = time.perf_counter()
        result = sensor_tick(instance, settings, **sensor_resources)
        report.longest_tick_s = max(report.longest_tick_s, time.perf_counter() - started)
        report.ticks += 1
        new = _new_run_requests(instance, result.run_requests or [])
        for run in execute_runs(instance, settings, new, run_config, **overrides):
            report.runs.append(run)
            report.step_retries += sum(
                event.event_type == DagsterEventType.STEP_UP_FOR_RETRY for event in run.all_events
            )
        report.run_keys += [request.run_key or "" for request in new]
        if not result.run_requests:
            if expect is None or ledger_settled(settings, expect):
                return report
            time.sleep(0.2)
    return report
