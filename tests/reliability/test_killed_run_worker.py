"""Fault 16: run workers killed by SIGKILL (the OOM killer) must not keep their pool slots.

The launcher path (``batchinfer_testing.launcher_path``): a real ``dagster-daemon`` on
``dagster.local.yaml`` (pool ``model_server`` of 2), PostgreSQL, the Pub/Sub emulator and the
real model server. Twice, once a run's step has started (its pool slot claimed), every run
worker alive is killed with SIGKILL; the code server reports their runs failed, the ledger's
reconcile gives their batches new runs, and every request must be predicted once. With the pool
counted per step (``granularity: op``, as before) the dead steps kept their slots and nothing
more was ever predicted; this test then timed out.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from dagster import DagsterRunStatus

from batchinfer_testing.daemon import ledger_settled
from batchinfer_testing.deployment import unique_name
from batchinfer_testing.invariants import Published, assert_invariants
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

REQUESTS = 40
BATCH_SIZE = 8
KILLS = 2
TIMEOUT_SECONDS = 420

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.pubsub]


def test_two_run_workers_killed_with_sigkill_and_every_request_is_predicted(
    postgres: PostgresServer,
    emulator: PubSubEmulator,
    cold_model_server: ModelServer,
    tmp_path: Path,
) -> None:
    path = launcher_path(
        postgres,
        emulator.host,
        tmp_path,
        name=unique_name("killed"),
        model_url=cold_model_server.url,
        batch_size=BATCH_SIZE,
        batch_max_wait_seconds=0,
        feature_wait_seconds=0,
        max_attempts=5,
    )
    load_numbered_records(path, tmp_path, REQUESTS)
    path.cli("publish", "--range", f"1-{REQUESTS}")
    log = tmp_path / "daemon.log"

    killed: list[int] = []
    hit_runs: set[str] = set()
    started = time.monotonic()
    with running_daemon(path, log) as daemon, path.instance() as instance:
        # Each round waits for a run whose step holds its pool slot (STEP_START), then kills
        # every run worker alive: the step's slot is what a per-step pool kept.
        for _ in range(KILLS):
            while not (in_step := runs_in_step(instance) - hit_runs):
                assert daemon.poll() is None, f"the daemon exited; see {log}"
                assert time.monotonic() - started < TIMEOUT_SECONDS, f"no run step; see {log}"
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
        while not (ledger_settled(path.settings, REQUESTS) and not unfinished_runs(instance)):
            assert daemon.poll() is None, f"the daemon exited; see {log}"
            assert time.monotonic() - started < TIMEOUT_SECONDS, (
                f"{REQUESTS} requests not settled {TIMEOUT_SECONDS} s after killing "
                f"{len(killed)} run workers (their pool slots kept?); see {log}"
            )
            time.sleep(1.0)
        runs = instance.get_run_records()

    counts = assert_invariants(
        path.settings, Published(valid=list(range(1, REQUESTS + 1))), "killed run workers"
    )
    assert (counts.predicted, counts.lost, counts.duplicates) == (REQUESTS, 0, 0)
    assert len(killed) >= KILLS
    # A run whose step ended just before its round's kill succeeded; the others failed.
    failed = [r for r in runs if r.dagster_run.status is DagsterRunStatus.FAILURE]
    assert len(failed) >= KILLS
    # The batches of the killed runs were predicted by later attempts (run key "<batch>#2").
    retried = {r.dagster_run.tags.get("dagster/run_key", "") for r in runs} - {""}
    assert sum("#" in key for key in retried) >= KILLS
