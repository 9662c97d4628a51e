"""A rollout survives its run workers killed with SIGKILL mid-way (issue #25, "a crash in the
middle of a rollout resumes without duplicates").

The launcher path (``batchinfer_testing.launcher_path``): a real ``dagster-daemon``, PostgreSQL,
the Pub/Sub emulator and the real model server. The records have current predictions; ``rollout
start`` writes the candidate's ledger batches; twice, once a rollout run's step has started,
every run worker alive is killed. The ledger's reconcile gives the killed batches new runs, and
at the end every record has exactly one candidate prediction, each rollout request was written
once and is done, the current predictions are untouched until ``rollout promote``, and the
report sensor has materialized the ``rollout_report`` partition with every record compared.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections import Counter
from pathlib import Path

import pytest
import sqlalchemy as sa
from dagster import AssetKey, DagsterInstance, DagsterRunStatus, RunsFilter

from batchinfer_dagster import db
from batchinfer_testing.contender import current_rows, predict_current, stored_records
from batchinfer_testing.deployment import engine_of, unique_name
from batchinfer_testing.launcher_path import (
    component,
    launcher_path,
    load_numbered_records,
    process_samples,
    running_daemon,
    runs_in_step,
    unfinished_runs,
)
from batchinfer_testing.model_server import ModelServer
from tests.services import PostgresServer, PubSubEmulator

RECORDS = 48
BATCH_SIZE = 8
KILLS = 2
TIMEOUT_SECONDS = 420

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.pubsub]


def report_materialized(instance: DagsterInstance, candidate: str) -> bool:
    event = instance.get_latest_materialization_event(AssetKey("rollout_report"))
    return event is not None and event.dagster_event.partition == candidate


def test_run_workers_killed_mid_rollout_and_each_record_gets_one_candidate_prediction(
    postgres: PostgresServer,
    emulator: PubSubEmulator,
    cold_model_server: ModelServer,
    tmp_path: Path,
) -> None:
    path = launcher_path(
        postgres,
        emulator.host,
        tmp_path,
        name=unique_name("rollout_crash"),
        model_url=cold_model_server.url,
        batch_size=BATCH_SIZE,
        batch_max_wait_seconds=0,
        feature_wait_seconds=0,
        max_attempts=5,
    )
    load_numbered_records(path, tmp_path, RECORDS)
    ids = predict_current(path.settings, *stored_records(path.settings)).ids
    before = current_rows(path.settings)
    descriptions = tmp_path / "candidate.json"
    descriptions.write_text(json.dumps({"billing": ["Money: payments, refunds and plans."]}))
    started = json.loads(
        path.cli("rollout", "start", "--label-descriptions", str(descriptions)).splitlines()[-1]
    )
    candidate = started["candidate"]
    assert started["requested"] == RECORDS

    engine = engine_of(path.settings)
    log = tmp_path / "daemon.log"
    killed: list[int] = []
    hit_runs: set[str] = set()
    clock = time.monotonic()
    with running_daemon(path, log) as daemon, path.instance() as instance:
        for _ in range(KILLS):
            while not (in_step := runs_in_step(instance, "predictions_job") - hit_runs):
                assert daemon.poll() is None, f"the daemon exited; see {log}"
                assert time.monotonic() - clock < TIMEOUT_SECONDS, f"no run step; see {log}"
                time.sleep(0.2)
            hit_runs |= in_step
            workers = [
                pid
                for pid, sample in process_samples([daemon.pid]).items()
                if component(sample.command) == "run workers"
            ]
            for pid in workers:
                os.kill(pid, signal.SIGKILL)
            killed += workers
            # Killed before promotion: the current predictions are as they were.
            assert current_rows(path.settings) == before
        while not (report_materialized(instance, candidate) and not unfinished_runs(instance)):
            assert daemon.poll() is None, f"the daemon exited; see {log}"
            assert time.monotonic() - clock < TIMEOUT_SECONDS, (
                f"rollout {candidate} not reported {TIMEOUT_SECONDS} s after killing "
                f"{len(killed)} run workers; see {log}"
            )
            time.sleep(1.0)
        runs = instance.get_run_records(RunsFilter(job_name="predictions_job"))
        report = instance.get_latest_materialization_event(AssetKey("rollout_report"))

    assert len(killed) >= KILLS
    assert sum(r.dagster_run.status is DagsterRunStatus.FAILURE for r in runs) >= 1
    retried = {r.dagster_run.tags.get("dagster/run_key", "") for r in runs}
    assert any("#" in key for key in retried), retried
    # Exactly one candidate row per record, each rollout request written once and done.
    table = db.predictions
    with engine.connect() as connection:
        candidate_ids = Counter(
            connection.execute(
                sa.select(table.c.record_id).where(table.c.configuration == candidate)
            ).scalars()
        )
        requests = connection.execute(
            sa.select(db.prediction_requests.c.record_id, db.prediction_requests.c.status)
            .join(
                db.rollout_batches,
                db.rollout_batches.c.batch_key == db.prediction_requests.c.batch_key,
            )
            .where(db.rollout_batches.c.candidate == candidate)
        ).all()
    assert candidate_ids == Counter(ids)
    assert Counter(r.record_id for r in requests) == Counter(ids)
    assert {r.status for r in requests} == {"done"}
    assert current_rows(path.settings) == before
    metadata = report.asset_materialization.metadata
    assert metadata["records_compared"].value == RECORDS
    assert metadata["requests_open"].value == 0

    promoted = json.loads(path.cli("rollout", "promote", candidate).splitlines()[-1])
    assert promoted["promoted"] == RECORDS
    assert {row[1] for row in current_rows(path.settings)} == {candidate}
