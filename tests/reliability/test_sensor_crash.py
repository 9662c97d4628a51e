"""Fault 1: the sensor loop process is SIGKILLed mid-tick, then restarted.

A real process runs the real sensor on a persistent Dagster instance; it dies (a) after the
ledger commit, before the ack, or (b) inside the intake transaction, before its commit. The
restarted loop must finish the work from the redelivered messages with nothing lost or doubled.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import sqlalchemy as sa

from batchinfer_dagster import db
from batchinfer_dagster.clients.queue import LocalQueue
from batchinfer_dagster.settings import Settings
from batchinfer_testing.deployment import engine_of, id_payloads, load_records, open_queue, publish
from batchinfer_testing.invariants import Published, assert_invariants
from batchinfer_testing.sensor_loop import sensor_loop_process

INVALID = [
    (b"{not json", "not JSON"),
    (b'{"record": 4}', "no 'id' field"),
    (b'{"id": 0}', "not a positive integer"),
]


def _count(settings: Settings, table: sa.Table) -> int:
    with engine_of(settings).connect() as connection:
        return connection.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()


@pytest.mark.parametrize("fault", ["kill-after-commit", "kill-before-commit"])
def test_sensor_killed_mid_tick_recovers_on_restart(
    fault: str, sqlite_settings: Settings, tmp_path: Path
) -> None:
    settings = sqlite_settings
    records = load_records(settings, 150)
    published = Published(valid=records, unknown=[10**9 + 1, 10**9 + 2], invalid=INVALID)
    payloads = id_payloads(records) + id_payloads(published.unknown)
    publish(settings, payloads + [payload for payload, _ in published.invalid])
    dagster_home = tmp_path / "dagster_home"
    dagster_home.mkdir()
    marker = tmp_path / "killed"

    crashed = sensor_loop_process(
        settings, dagster_home, fault=fault, marker=marker, expect=published.messages
    )
    assert crashed.returncode == -signal.SIGKILL, crashed.stdout + crashed.stderr[-3000:]
    assert marker.exists()
    queue = open_queue(settings)
    try:
        assert isinstance(queue, LocalQueue)
        assert queue.depth() == published.messages, "acked anyway"
    finally:
        queue.close()
    in_ledger = _count(settings, db.prediction_requests)
    assert in_ledger == (len(payloads) if fault == "kill-after-commit" else 0)
    assert _count(settings, db.predictions) == 0

    restarted = sensor_loop_process(
        settings, dagster_home, fault=fault, marker=marker, expect=len(payloads)
    )
    assert restarted.returncode == 0, restarted.stdout + restarted.stderr[-3000:]
    assert_invariants(settings, published, f"sensor SIGKILL {fault}")
