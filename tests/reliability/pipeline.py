"""Records, publishing and the in-process daemon loop that the fault tests share."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa
from dagster import DagsterEventType, DagsterInstance, RunsFilter

from batchinfer_dagster import db, ledger
from batchinfer_dagster.records import add_records
from batchinfer_dagster.resources.feature_store import build_feature_store
from batchinfer_dagster.resources.queue import build_queue
from batchinfer_dagster.settings import Settings
from tests.dagster.harness import REPO_ROOT, execute_runs, sensor_tick

TEXTS = [
    json.loads(line)["text"]
    for line in (REPO_ROOT / "bench" / "data" / "support_messages.jsonl").read_text().splitlines()
]
RUN_KEY_TAG = "dagster/run_key"


def load_records(settings: Settings, count: int, *, words: int = 8) -> list[int]:
    """``count`` short, distinct records, imported into the local feature store."""
    texts = [" ".join(TEXTS[i % len(TEXTS)].split()[:words]) + f" #{i}" for i in range(count)]
    engine = db.get_engine(settings)
    ids: list[int] = []
    for start in range(0, count, 5000):
        ids += add_records(engine, texts[start : start + 5000])
    imported = build_feature_store(settings).import_records()
    assert imported.total_records >= count
    return ids


def publish(settings: Settings, payloads: Sequence[bytes]) -> list[str]:
    queue = build_queue(settings)
    try:
        return queue.publish(list(payloads))
    finally:
        queue.close()


def id_payloads(record_ids: Sequence[int]) -> list[bytes]:
    return [json.dumps({"id": str(i)}).encode() for i in record_ids]


def ledger_settled(settings: Settings, expect: int) -> bool:
    """At least ``expect`` requests in the ledger, all in a final status, all batches too."""
    table = db.prediction_requests
    batches = db.prediction_batches
    with db.get_engine(settings).connect() as connection:
        statuses = dict(
            connection.execute(
                sa.select(table.c.status, sa.func.count()).group_by(table.c.status)
            ).all()
        )
        open_batches = connection.execute(
            sa.select(sa.func.count()).where(
                batches.c.status.not_in([ledger.SUCCEEDED, ledger.DEAD_LETTERED])
            )
        ).scalar_one()
    final = statuses.get(ledger.DONE, 0) + statuses.get(ledger.DEAD_LETTERED, 0)
    return final >= expect and final == sum(statuses.values()) and open_batches == 0


@dataclass
class LoopReport:
    ticks: int = 0
    runs: int = 0
    failed_runs: int = 0
    # Steps retried inside a run after a transient model error (RetryRequested).
    step_retries: int = 0
    longest_tick_s: float = 0.0
    run_keys: list[str] = field(default_factory=list)


def run_daemon_loop(
    instance: DagsterInstance,
    settings: Settings,
    *,
    expect: int,
    max_seconds: float = 240,
    **resource_fields: object,
) -> LoopReport:
    """Tick the real sensor and execute its new run keys until ``expect`` requests settle.

    ``max_seconds`` only stops a loop that would never settle (the invariants then fail).
    """
    report = LoopReport()
    deadline = time.monotonic() + max_seconds
    while time.monotonic() < deadline:
        started = time.perf_counter()
        result = sensor_tick(instance, settings)
        report.longest_tick_s = max(report.longest_tick_s, time.perf_counter() - started)
        report.ticks += 1
        new = [
            request
            for request in result.run_requests
            if not instance.get_run_records(
                RunsFilter(tags={RUN_KEY_TAG: request.run_key or ""}), limit=1
            )
        ]
        for run in execute_runs(instance, settings, new, **resource_fields):
            report.runs += 1
            report.failed_runs += not run.success
            report.step_retries += sum(
                event.event_type == DagsterEventType.STEP_UP_FOR_RETRY for event in run.all_events
            )
        report.run_keys += [request.run_key or "" for request in new]
        if not result.run_requests and ledger_settled(settings, expect):
            return report
        time.sleep(0.2)
    return report


def sensor_loop_process(
    settings: Settings, dagster_home: Path, *, fault: str, marker: Path, expect: int
) -> subprocess.CompletedProcess:
    """Run ``tests/reliability/sensor_loop.py`` to its end (exit or SIGKILL)."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.reliability.sensor_loop",
            "--settings",
            settings.model_dump_json(),
            "--fault",
            fault,
            "--marker",
            str(marker),
            "--expect",
            str(expect),
        ],
        cwd=REPO_ROOT,
        env={**os.environ, "DAGSTER_HOME": str(dagster_home)},
        capture_output=True,
        text=True,
        timeout=300,
        start_new_session=True,
        check=False,
    )
