"""Faults 2 and 3: the model server goes down during runs, answers 500, or is too slow.

Runs retry transient errors with backoff (``RetryRequested``), and the sensor's reconcile gives a
failed batch another run; upserts make a batch that is predicted twice still one row per record.
"""

from __future__ import annotations

import threading
import time

import sqlalchemy as sa
from dagster import DagsterInstance

from batchinfer_dagster import db
from batchinfer_dagster.settings import Settings
from batchinfer_testing.daemon import run_daemon_loop
from batchinfer_testing.deployment import (
    engine_of,
    id_payloads,
    load_records,
    model_server_of,
    publish,
)
from batchinfer_testing.fault_proxy import FaultProxy
from batchinfer_testing.invariants import Published, assert_invariants
from batchinfer_testing.model_server import ModelServer

INVALID = [(b'{"id": -3}', "not a positive integer")]


def _predictions(settings: Settings) -> int:
    with engine_of(settings).connect() as connection:
        return connection.execute(
            sa.select(sa.func.count()).select_from(db.predictions)
        ).scalar_one()


def test_model_server_down_during_runs_then_back(
    instance: DagsterInstance, sqlite_settings: Settings, model_server: ModelServer
) -> None:
    """SIGKILL the model server once the first batch is written; start it again 2 s later."""
    settings = sqlite_settings.model_copy(update={"max_attempts": 10, "model_timeout_seconds": 30})
    records = load_records(settings, 400)
    published = Published(valid=records, unknown=[10**9 + 7], invalid=INVALID)
    publish(settings, id_payloads(records + published.unknown) + [INVALID[0][0]])
    outage: dict[str, float] = {}

    def outage_after_first_batch() -> None:
        while _predictions(settings) == 0:
            time.sleep(0.05)
        model_server.kill()
        outage["predicted_before"] = _predictions(settings)
        time.sleep(2)
        model_server.start()
        outage["predicted_when_back"] = _predictions(settings)

    killer = threading.Thread(target=outage_after_first_batch)
    killer.start()
    try:
        report = run_daemon_loop(
            instance,
            settings,
            expect=len(records) + 1,
            model_server=model_server_of(settings, retry_delay_seconds=1.0),
        )
    finally:
        killer.join()
    assert outage["predicted_before"] < len(records), "the outage came after the last batch"
    # The outage shows as step retries inside a run, failed runs, or extra reconcile runs.
    assert (
        report.step_retries > 0
        or report.failed_runs > 0
        or len(report.runs) > len(records) // settings.batch_size + 1
    ), f"no run saw the outage: {report}"
    counts = assert_invariants(settings, published, "model server SIGKILLed, back after ~20 s")
    print(counts, report, outage)


class FirstTryFaults:
    """Of the first 12 distinct chunks, one in three answers 500 and one in three is slow, on
    their first try only: the retry of the same chunk goes through."""

    def __init__(self) -> None:
        self.distinct = 0

    def __call__(self, body: bytes, seen: int) -> str | None:
        if seen > 0:
            return None
        self.distinct += 1
        if self.distinct > 12:
            return None
        return {0: "500", 1: "slow"}.get(self.distinct % 3)


def test_model_server_errors_and_timeouts_behind_proxy(
    instance: DagsterInstance, sqlite_settings: Settings, model_server: ModelServer
) -> None:
    with FaultProxy(model_server.url, FirstTryFaults(), slow_seconds=7) as proxy:
        settings = sqlite_settings.model_copy(
            update={"model_url": proxy.url, "model_timeout_seconds": 5.0, "model_chunk_size": 16}
        )
        records = load_records(settings, 320)
        published = Published(valid=records, invalid=INVALID)
        publish(settings, id_payloads(records) + [INVALID[0][0]])
        report = run_daemon_loop(
            instance,
            settings,
            expect=len(records),
            model_server=model_server_of(settings, retry_delay_seconds=0.2),
        )
    assert proxy.faults["500"] > 0, proxy.faults
    assert proxy.faults["slow"] > 0, proxy.faults
    counts = assert_invariants(settings, published, "model server 500 / past client timeout")
    print(counts, report, dict(proxy.faults))
