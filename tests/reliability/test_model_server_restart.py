"""A model server restarted under a batch: its runs wait for the warm-up instead of failing.

The scenario of a `make run` restart: a batch's run is requested, the model server restarts,
and the run meets it while ``/health`` says ``loading`` or ``warming_up`` (503 on ``/predict``).
The runs get no step retry (``retries=0``), so a run that treated the start as a failure would
fail and its batch would need a second attempt; the model client waits instead.
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import sqlalchemy as sa
from dagster import DagsterInstance
from prometheus_client.parser import text_string_to_metric_families

from batchinfer_dagster import db
from batchinfer_dagster.settings import Settings
from batchinfer_testing.daemon import execute_runs, sensor_tick
from batchinfer_testing.deployment import (
    engine_of,
    id_payloads,
    load_records,
    model_server_of,
    publish,
)
from batchinfer_testing.invariants import Published, assert_invariants
from batchinfer_testing.model_server import ModelServer, running_model_server

# A bound on waiting for the restarted server to listen, not a measurement.
LISTEN_TIMEOUT_S = 60


def wait_until_listening(server: ModelServer) -> str:
    """Wait until the server answers ``/health`` at all; returns what it says (not ready yet)."""
    deadline = time.monotonic() + LISTEN_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            return httpx.get(f"{server.url}/health", timeout=2).json()["status"]
        except httpx.TransportError:
            time.sleep(0.05)
    raise TimeoutError(f"the restarted model server did not listen within {LISTEN_TIMEOUT_S} s")


def predict_503s(server: ModelServer) -> float:
    """``/predict`` requests the server answered 503 (not ready) since it started."""
    text = httpx.get(f"{server.url}/metrics", timeout=30).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "model_server_requests_total"
        and sample.labels == {"route": "predict", "status": "503"}
    )


def test_a_model_server_restarted_under_a_batch_costs_no_attempt(
    instance: DagsterInstance, tmp_path: Path
) -> None:
    # Started without a warm-up (quick), restarted with one: the window the runs meet.
    with running_model_server(MODEL_WARMUP="false", MODEL_MAX_BATCH_SIZE="16") as server:
        settings = Settings(
            home=tmp_path,
            model_url=server.url,
            pull_timeout_seconds=0.3,
            batch_size=64,
            batch_max_wait_seconds=0,
            feature_wait_seconds=0,
        )
        records = load_records(settings, 100)
        publish(settings, id_payloads(records))
        requested = sensor_tick(instance, settings).run_requests
        assert len(requested) == 2

        server.stop()
        server.env["MODEL_WARMUP"] = "true"
        server.start(wait=False)
        state_when_runs_start = wait_until_listening(server)
        runs = execute_runs(
            instance, settings, requested, model_server=model_server_of(settings, retries=0)
        )
        refused_while_starting = predict_503s(server)

    assert state_when_runs_start in {"loading", "warming_up"}
    assert [run.success for run in runs] == [True, True]
    with engine_of(settings).connect() as connection:
        batches = connection.execute(
            sa.select(db.prediction_batches.c.status, db.prediction_batches.c.attempts)
        ).all()
    assert sorted(batches) == [("succeeded", 1), ("succeeded", 1)]
    assert refused_while_starting > 0
    assert_invariants(settings, Published(valid=records), "model server restarted under a batch")
