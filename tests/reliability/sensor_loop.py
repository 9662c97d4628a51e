"""The daemon's sensor loop as a real process, with a fault that SIGKILLs it mid-tick.

``python -m tests.reliability.sensor_loop`` evaluates the real ``prediction_requests_sensor`` with
``build_sensor_context`` on the persistent instance of ``$DAGSTER_HOME`` and executes each
RunRequest whose run key has no run yet (the daemon's run-key dedup), until the ledger holds
``--expect`` settled requests and the queue is empty. Faults live here, never in production code:

- ``kill-after-commit``: the queue's ``ack`` SIGKILLs this process: the ledger is committed and
  the partitions registered, the messages are not acked;
- ``kill-before-commit``: the commit of the intake transaction SIGKILLs it: nothing is written.

The fault fires once: the marker file ``--marker`` records that it did, so a restart runs clean.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import sqlalchemy as sa
from dagster import DagsterInstance, RunsFilter, build_sensor_context

from batchinfer_dagster import db, ledger
from batchinfer_dagster.assets import BatchinferResource
from batchinfer_dagster.definitions import build_definitions
from batchinfer_dagster.resources.queue import LocalQueue, ReceivedMessage, RequestQueue
from batchinfer_dagster.sensors import prediction_requests_sensor
from batchinfer_dagster.settings import Settings

RUN_KEY_TAG = "dagster/run_key"


def die(marker: Path, why: str) -> None:
    marker.write_text(why)
    print(f"sensor loop: SIGKILL {why}", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)


class KillAtAckQueue(RequestQueue):
    """The real queue; its ``ack`` kills the process instead of acking."""

    def __init__(self, queue: RequestQueue, marker: Path) -> None:
        self.queue = queue
        self.marker = marker

    def publish(self, payloads: Sequence[bytes]) -> list[str]:
        return self.queue.publish(payloads)

    def pull(self, max_messages: int, timeout: float) -> list[ReceivedMessage]:
        return self.queue.pull(max_messages, timeout)

    def ack(self, ack_ids: Sequence[str]) -> None:
        die(self.marker, f"after the ledger commit, before acking {len(ack_ids)} messages")

    def nack(self, ack_ids: Sequence[str]) -> None:
        self.queue.nack(ack_ids)

    def close(self) -> None:
        self.queue.close()


class KillAtAckResource(BatchinferResource):
    marker_path: str

    def get_queue(self) -> RequestQueue:
        return KillAtAckQueue(super().get_queue(), Path(self.marker_path))


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


def settled(settings: Settings, expect: int) -> bool:
    engine = db.get_engine(settings)
    table = db.prediction_requests
    with engine.connect() as connection:
        statuses = dict(
            connection.execute(
                sa.select(table.c.status, sa.func.count()).group_by(table.c.status)
            ).all()
        )
    final = statuses.get(ledger.DONE, 0) + statuses.get(ledger.DEAD_LETTERED, 0)
    queue = LocalQueue(engine)
    return final >= expect and final == sum(statuses.values()) and queue.depth() == 0


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
    sensor_resource = BatchinferResource.for_settings(settings)
    if fault == "kill-after-commit":
        sensor_resource = KillAtAckResource(
            settings_json=settings.model_dump_json(), marker_path=str(args.marker)
        )
    elif fault == "kill-before-commit":
        kill_at_intake_commit(db.get_engine(settings), args.marker)
    job = build_definitions(BatchinferResource.for_settings(settings)).resolve_job_def(
        "predictions_job"
    )
    deadline = time.monotonic() + args.max_seconds
    with DagsterInstance.get() as instance:
        while time.monotonic() < deadline:
            context = build_sensor_context(
                instance=instance, resources={"batchinfer": sensor_resource}
            )
            result = prediction_requests_sensor(context)
            for request in result.run_requests or []:
                tags = {RUN_KEY_TAG: request.run_key or ""}
                if instance.get_run_records(RunsFilter(tags=tags), limit=1):
                    continue
                job.execute_in_process(
                    partition_key=request.partition_key,
                    instance=instance,
                    tags={**tags, **request.tags},
                    raise_on_error=False,
                )
            if not result.run_requests and settled(settings, args.expect):
                print("sensor loop: settled", flush=True)
                return 0
            time.sleep(0.2)
    print("sensor loop: not settled before --max-seconds", flush=True)
    return 3


if __name__ == "__main__":
    sys.exit(main())
