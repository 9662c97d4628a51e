"""What the Dagster tests share: a real model server process, and the daemon's part of a tick.

``drain`` does what the Dagster daemon does around the sensor: evaluate it, then launch the runs
it asked for (here in-process, on the same instance) until the queue and ledger are quiet.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from dagster import (
    DagsterInstance,
    ExecuteInProcessResult,
    RunRequest,
    SensorResult,
    build_sensor_context,
)

from batchinfer_dagster import db
from batchinfer_dagster.assets import BatchinferResource
from batchinfer_dagster.definitions import build_definitions
from batchinfer_dagster.processes import wait_until_healthy
from batchinfer_dagster.resources.queue import ReceivedMessage, RequestQueue
from batchinfer_dagster.sensors import prediction_requests_sensor
from batchinfer_dagster.settings import Settings
from tests.services import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]


@contextlib.contextmanager
def model_server_process(port: int | None = None, **env: str) -> Iterator[str]:
    """``python -m model_server`` (embedding backend) on a free port; yields its base URL."""
    port = port or free_port()
    environment = {
        **os.environ,
        "AIP_HTTP_PORT": str(port),
        "MODEL_BACKEND": "embedding",
        "MODEL_DEVICE": "cpu",
        "MODEL_LOG_LEVEL": "warning",
        "HF_HUB_OFFLINE": "1",
        **env,
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "model_server"],
        cwd=REPO_ROOT,
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, process)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_healthy(url: str, process: subprocess.Popen, timeout: float = 180) -> None:
    def stderr() -> str:
        return process.stderr.read().decode() if process.stderr else ""

    wait_until_healthy(f"{url}/health", process, timeout=timeout, output=stderr)


def publish_json(settings: Settings, bodies: Iterable[object]) -> list[str]:
    from batchinfer_dagster.resources.queue import build_queue

    queue = build_queue(settings)
    try:
        return queue.publish([json.dumps(body).encode() for body in bodies])
    finally:
        queue.close()


def sensor_tick(instance: DagsterInstance, settings: Settings) -> SensorResult:
    """Evaluate the real sensor definition once, as the daemon would."""
    context = build_sensor_context(
        instance=instance, resources={"batchinfer": BatchinferResource.for_settings(settings)}
    )
    result = prediction_requests_sensor(context)
    assert isinstance(result, SensorResult), result
    return result


def execute_runs(
    instance: DagsterInstance,
    settings: Settings,
    run_requests: Sequence[RunRequest],
    run_config: Mapping[str, Any] | None = None,
    **resource_fields: Any,
) -> list[ExecuteInProcessResult]:
    """Launch the sensor's run requests in-process, tagged like the daemon tags them."""
    resource = BatchinferResource.for_settings(settings, **resource_fields)
    job = build_definitions(resource).resolve_job_def("predictions_job")
    return [
        job.execute_in_process(
            partition_key=request.partition_key,
            instance=instance,
            run_config=run_config,
            tags={"dagster/run_key": request.run_key or "", **request.tags},
            raise_on_error=False,
        )
        for request in run_requests
    ]


@dataclass
class DrainReport:
    ticks: int = 0
    runs: list[ExecuteInProcessResult] = field(default_factory=list)


def drain(
    instance: DagsterInstance, settings: Settings, *, max_ticks: int = 50, quiet_ticks: int = 1
) -> DrainReport:
    """Tick and run until ``quiet_ticks`` ticks in a row request nothing."""
    report = DrainReport()
    quiet = 0
    while report.ticks < max_ticks and quiet < quiet_ticks:
        result = sensor_tick(instance, settings)
        report.ticks += 1
        if result.run_requests:
            quiet = 0
            report.runs += execute_runs(instance, settings, result.run_requests)
        else:
            quiet += 1
    return report


def rows(settings: Settings, table: sa.Table, *where: sa.ColumnElement) -> list[sa.Row]:
    with db.get_engine(settings).connect() as connection:
        return connection.execute(sa.select(table).where(*where)).all()


class AckCrashQueue(RequestQueue):
    """The real queue, but the process "dies" at the ack: the messages come back unacked.

    Nacking before raising makes the redelivery immediate instead of after the ack deadline;
    the redelivered messages keep their ids, exactly as after a lease expiry.
    """

    def __init__(self, queue: RequestQueue) -> None:
        self.queue = queue
        self.crashed_on: list[str] = []

    def publish(self, payloads: Sequence[bytes]) -> list[str]:
        return self.queue.publish(payloads)

    def pull(self, max_messages: int, timeout: float) -> list[ReceivedMessage]:
        return self.queue.pull(max_messages, timeout)

    def ack(self, ack_ids: Sequence[str]) -> None:
        self.crashed_on = list(ack_ids)
        self.queue.nack(ack_ids)
        raise ConnectionAbortedError(f"simulated crash before acking {len(ack_ids)} messages")

    def nack(self, ack_ids: Sequence[str]) -> None:
        self.queue.nack(ack_ids)

    def close(self) -> None:
        self.queue.close()
