"""Fault 4: PostgreSQL (the app database) restarts while a prediction run is in flight."""

from __future__ import annotations

import threading
from pathlib import Path

from dagster import DagsterInstance

from batchinfer_dagster import db
from batchinfer_dagster.settings import Settings
from batchinfer_testing.daemon import run_daemon_loop
from batchinfer_testing.deployment import id_payloads, load_records, model_server_of, publish
from batchinfer_testing.fault_proxy import FaultProxy
from batchinfer_testing.invariants import Published, assert_invariants
from batchinfer_testing.model_server import ModelServer
from tests.services import PostgresServer


def test_postgres_restart_in_the_middle_of_a_run(
    instance: DagsterInstance,
    postgres: PostgresServer,
    postgres_url: str,
    model_server: ModelServer,
    tmp_path: Path,
) -> None:
    """The restart happens while the run waits for the model: after ``start_batch``, before the
    transaction that writes predictions and settles the batch."""
    restarts: list[int] = []
    lock = threading.Lock()

    def restart_on_second_model_call() -> None:
        with lock:
            restarts.append(len(restarts))
            if len(restarts) == 2:
                postgres.restart()

    with FaultProxy(model_server.url, lambda body, seen: None) as proxy:
        proxy.on_request = restart_on_second_model_call
        settings = Settings(
            home=tmp_path,
            database_url=postgres_url,
            model_url=proxy.url,
            pull_timeout_seconds=0.3,
            batch_size=64,
            feature_wait_seconds=0,
            ack_deadline_seconds=2,
        )
        try:
            records = load_records(settings, 300)
            published = Published(valid=records, unknown=[10**9 + 3])
            publish(settings, id_payloads(records + published.unknown))
            report = run_daemon_loop(
                instance,
                settings,
                expect=published.messages,
                model_server=model_server_of(settings, retry_delay_seconds=0.2),
            )
            assert len(restarts) >= 2, "the restart never happened"
            counts = assert_invariants(settings, published, "PostgreSQL restart mid-run")
            print(counts, report)
        finally:
            db.dispose_engines()
