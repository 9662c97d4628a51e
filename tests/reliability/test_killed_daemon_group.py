"""A daemon SIGKILLed with its whole process group mid-drain: its runs end, every request settles.

A supervisor's restart (systemd's ``KillMode=control-group``) or a container's exit kills the
daemon, its code server and the run workers at once. Dagster's run monitoring checks a STARTED
run's worker only through the launcher's health check, which the local ``DefaultRunLauncher``
lacks, and the code server that would have reported the dead worker died too: before
``max_runtime_seconds`` was set in ``dagster.local.yaml`` such a run stayed STARTED for good,
reconcile saw its batch in flight, and the batch was never predicted.

The launcher path (real ``dagster-daemon``, PostgreSQL, the Pub/Sub emulator, the real model
server) with the short run-monitoring bounds of the fault schedules
(``ORPHANED_RUN_BOUNDS``: the test waits ~1.5 min, not an hour). The model server is stopped
(SIGSTOP) so the first runs are sure to be inside their step when the group is killed, and
continued once it is dead; the daemon is then started again. Each run caught in flight must
end FAILURE and every request must be predicted exactly once.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from dagster import DagsterRunStatus

from batchinfer_testing.daemon import ledger_settled
from batchinfer_testing.deployment import unique_name
from batchinfer_testing.fault_schedule import ORPHANED_RUN_BOUNDS
from batchinfer_testing.invariants import Published, assert_invariants
from batchinfer_testing.launcher_path import (
    launcher_path,
    load_numbered_records,
    running_daemon,
    runs_in_step,
    unfinished_runs,
)
from batchinfer_testing.model_server import ModelServer
from tests.services import PostgresServer, PubSubEmulator

REQUESTS = 24
BATCH_SIZE = 8
# A bound on each wait (a run in its step; the drain after the restart), not a measurement:
# the restart's part is the run-monitoring bound plus a reconcile and a run on a loaded machine.
WAIT_BOUND_S = 420

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.pubsub]


@contextlib.contextmanager
def stopped(server: ModelServer) -> Iterator[None]:
    """The model server's process group stopped (SIGSTOP), continued at the end whatever
    happens: requests sent to it wait, unanswered."""
    os.killpg(server.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.killpg(server.pid, signal.SIGCONT)


@pytest.mark.timeout(2 * WAIT_BOUND_S + 300)
def test_a_daemon_killed_with_its_process_group_leaves_no_run_started_for_good(
    postgres: PostgresServer,
    emulator: PubSubEmulator,
    cold_model_server: ModelServer,
    tmp_path: Path,
) -> None:
    path = launcher_path(
        postgres,
        emulator.host,
        tmp_path,
        name=unique_name("killedgroup"),
        run_monitoring=ORPHANED_RUN_BOUNDS,
        model_url=cold_model_server.url,
        batch_size=BATCH_SIZE,
        batch_max_wait_seconds=0,
        feature_wait_seconds=0,
        max_attempts=5,
    )
    load_numbered_records(path, tmp_path, REQUESTS)
    path.cli("publish", "--range", f"1-{REQUESTS}")
    log = tmp_path / "daemon.log"

    started = time.monotonic()
    with path.instance() as instance:
        with stopped(cold_model_server), running_daemon(path, log) as daemon:
            while not (caught := runs_in_step(instance)):
                assert daemon.poll() is None, f"the daemon exited; see {log}"
                assert time.monotonic() - started < WAIT_BOUND_S, f"no run in its step; see {log}"
                time.sleep(0.2)
            os.killpg(daemon.pid, signal.SIGKILL)
            daemon.wait()
        killed_at = time.monotonic()
        log = tmp_path / "daemon-restarted.log"
        with running_daemon(path, log) as daemon:
            while not (ledger_settled(path.settings, REQUESTS) and not unfinished_runs(instance)):
                assert daemon.poll() is None, f"the restarted daemon exited; see {log}"
                assert time.monotonic() - killed_at < WAIT_BOUND_S, (
                    f"{REQUESTS} requests not settled {WAIT_BOUND_S} s after the daemon's group "
                    f"was killed (a run left STARTED?); see {log}"
                )
                time.sleep(1.0)
        settled_s = time.monotonic() - killed_at
        runs = {r.dagster_run.run_id: r for r in instance.get_run_records()}

    for run_id in caught:
        assert runs[run_id].dagster_run.status is DagsterRunStatus.FAILURE, run_id
    failed_s = max(runs[run_id].end_time or 0.0 for run_id in caught) - min(
        runs[run_id].start_time or 0.0 for run_id in caught
    )
    print(f"caught {len(caught)} runs; failed {failed_s:.0f} s after their start, all settled")
    print(f"{settled_s:.0f} s after the kill, the test took {time.monotonic() - started:.0f} s")
    counts = assert_invariants(
        path.settings, Published(valid=list(range(1, REQUESTS + 1))), "killed daemon group"
    )
    assert (counts.predicted, counts.lost, counts.duplicates) == (REQUESTS, 0, 0)
    # The caught runs' batches were predicted by later attempts (run key "<batch>#2").
    retried = {r.dagster_run.tags.get("dagster/run_key", "") for r in runs.values()}
    assert sum("#" in key for key in retried) >= len(caught)
