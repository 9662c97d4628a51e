"""The daemon's sensor loop as a real process, with a fault that SIGKILLs it mid-tick.

``python -m batchinfer_testing.sensor_loop`` runs ``run_daemon_loop`` on the persistent instance
of ``$DAGSTER_HOME`` until the ledger holds ``--expect`` settled requests. Faults live here,
never in product code:

- ``kill-after-commit``: the queue's ``ack`` SIGKILLs this process: the ledger is committed and
  the partitions registered, the messages are not acked;
- ``kill-before-commit``: the commit of the intake transaction SIGKILLs it: nothing is written.

The fault fires once: the marker file ``--marker`` records that it did, so a restart runs clean.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from dagster import DagsterInstance

from batchinfer_dagster.settings import Settings
from batchinfer_testing.daemon import ledger_settled, run_daemon_loop
from batchinfer_testing.deployment import engine_of, open_queue, resources_of
from batchinfer_testing.model_server import REPO_ROOT
from batchinfer_testing.queues import FaultInjectingQueueResource, die


def kill_at_intake_commit(engine: sa.Engine, marker: Path) -> None:
    """SIGKILL when a transaction that inserted prediction requests is about to commit."""
    pending: dict[int, bool] = {}

    @sa.event.listens_for(engine, "before_cursor_execute")
    def note(connection, cursor, statement, parameters, context, executemany) -> None:  # noqa: ANN001, PLR0913
        if statement.lstrip().upper().startswith("INSERT INTO PREDICTION_REQUESTS"):
            pending[id(connection)] = True

    @sa.event.listens_for(engine, "commit")
    def commit(connection) -> None:  # noqa: ANN001
        if pending.pop(id(connection), False):
            die(marker, "inside the intake transaction, before its commit")


def queue_is_empty(settings: Settings) -> bool:
    queue = open_queue(settings)
    try:
        return queue.depth() == 0  # type: ignore[attr-defined]
    finally:
        queue.close()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--settings", required=True, help="Settings as JSON")
    parser.add_argument("--fault", choices=["none", "kill-after-commit", "kill-before-commit"])
    parser.add_argument("--marker", type=Path, required=True)
    parser.add_argument("--expect", type=int, required=True, help="requests to settle")
    parser.add_argument("--max-seconds", type=float, default=120)
    args = parser.parse_args()
    settings = Settings.model_validate_json(args.settings)
    fault = "none" if args.marker.exists() else args.fault
    sensor_overrides: dict[str, Any] = {}
    if fault == "kill-after-commit":
        sensor_overrides["request_queue"] = FaultInjectingQueueResource.around(
            resources_of(settings)["request_queue"], "kill-at-ack", marker_path=str(args.marker)
        )
    elif fault == "kill-before-commit":
        kill_at_intake_commit(engine_of(settings), args.marker)
    deadline = time.monotonic() + args.max_seconds
    with DagsterInstance.get() as instance:
        while time.monotonic() < deadline:
            run_daemon_loop(
                instance,
                settings,
                expect=args.expect,
                max_seconds=deadline - time.monotonic(),
                sensor_overrides=sensor_overrides,
            )
            if ledger_settled(settings, args.expect) and queue_is_empty(settings):
                print("sensor loop: settled", flush=True)
                return 0
            time.sleep(0.2)
    print("sensor loop: not settled before --max-seconds", flush=True)
    return 3


def sensor_loop_process(
    settings: Settings, dagster_home: Path, *, fault: str, marker: Path, expect: int
) -> subprocess.CompletedProcess:
    """Run this module as a process to its end (exit or SIGKILL)."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "batchinfer_testing.sensor_loop",
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


if __name__ == "__main__":
    sys.exit(main())
