"""The launcher path: a real ``dagster-daemon`` drains a backlog with runs out of process.

PostgreSQL holds the app database and Dagster's storage, the queue is the Pub/Sub emulator, and
the instance is ``dagster.local.yaml`` on PostgreSQL (DefaultRunLauncher, QueuedRunCoordinator,
``model_server`` pool limit 2). Nothing runs in the test's process: records are loaded,
imported and published with the CLI, and the daemon's own sensor launches every run.
"""

from __future__ import annotations

import os
from pathlib import Path

from dagster import DagsterRunStatus

from batchinfer_testing.deployment import unique_name
from batchinfer_testing.invariants import Published, assert_invariants
from batchinfer_testing.launcher_path import (
    drain,
    launcher_path,
    load_numbered_records,
    read_drain,
)
from batchinfer_testing.services import PostgresServer, PubSubEmulator

REQUESTS = 60
BATCH_SIZE = 16


def test_the_daemon_drains_a_backlog_through_its_launcher(
    postgres: PostgresServer, emulator: PubSubEmulator, model_server_url: str, tmp_path: Path
) -> None:
    path = launcher_path(
        postgres,
        emulator.host,
        tmp_path,
        name=unique_name("launcher"),
        model_url=model_server_url,
        batch_size=BATCH_SIZE,
        feature_wait_seconds=0,
    )
    load_numbered_records(path, tmp_path, REQUESTS)
    path.cli("publish", "--range", f"1-{REQUESTS}")

    watch = drain(path, REQUESTS, tmp_path / "daemon.log", timeout=300, poll_seconds=0.5)

    counts = assert_invariants(
        path.settings, Published(valid=list(range(1, REQUESTS + 1))), "daemon launcher"
    )
    assert (counts.predicted, counts.lost, counts.duplicates) == (REQUESTS, 0, 0)
    with path.instance() as instance:
        record = read_drain(instance)
    # 60 requests in batches of at most 16: at least 4 runs, each a partition of its own.
    assert len(record.runs) >= -(-REQUESTS // BATCH_SIZE)
    assert record.partitions == len(record.runs)
    assert all(run.status == DagsterRunStatus.SUCCESS for run in record.runs)
    # Out of process: each run was launched, started in its own process and reached the model.
    assert all(run.launched and run.started and run.model_started for run in record.runs)
    assert all(run.launched <= run.started <= run.model_started for run in record.runs)
    assert record.ticks >= 1
    # The daemon's tree held a run worker besides the daemon and its code server at some point.
    assert watch.peak_processes >= 3
    assert os.getpid() not in {run.worker_pid for run in record.runs}
    assert len({run.worker_pid for run in record.runs}) == len(record.runs)
    # The benchmark's accounting: every run reports its model phase, which lies in the drain,
    # and the CPU the run workers and the daemon used is found under their own names.
    assert all(run.model_seconds is not None and run.model_seconds > 0 for run in record.runs)
    assert 0 < record.sending_seconds() < watch.seconds
    assert watch.cpu_s["run workers"] > 0
    assert watch.cpu_s["daemon"] > 0
