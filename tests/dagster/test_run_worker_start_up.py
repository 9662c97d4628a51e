"""What a `predictions` run worker pays before its first text reaches the model.

Measured in docs/benchmarks.md ("Backlog through the daemon's launcher"); these tests pin the two
causes that were removed: a second process per run, and the Google libraries imported by a
worker on the local path.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from batchinfer_dagster.definitions import defs
from batchinfer_testing.model_server import REPO_ROOT

# Modules a local deployment's code location must not import (each is seconds of a run's
# start-up): dagster-gcp pulls in BigQuery and pandas; the Pub/Sub client is the sensor's only.
GOOGLE_ONLY = ["dagster_gcp", "google.cloud.bigquery", "pandas", "google.cloud.pubsub_v1"]


def test_a_predictions_run_executes_its_step_in_the_run_worker() -> None:
    job = defs.resolve_job_def("predictions_job")
    assert job.executor_def.name == "in_process"
    assert len(job.nodes) == 1


def imported_by_code_location(**env: str) -> dict[str, bool]:
    probe = (
        "import json, sys\n"
        "import batchinfer_dagster.definitions\n"
        f"print(json.dumps({{m: m in sys.modules for m in {GOOGLE_ONLY!r}}}))\n"
    )
    clean = {k: v for k, v in os.environ.items() if not k.startswith("BATCHINFER_")}
    result = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=REPO_ROOT,
        env={**clean, **env},
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(result.stdout.splitlines()[-1])


def test_the_local_code_location_imports_no_google_library(tmp_path: Path) -> None:
    imported = imported_by_code_location(BATCHINFER_HOME=str(tmp_path))
    assert imported == dict.fromkeys(GOOGLE_ONLY, False)


def test_the_pubsub_code_location_leaves_the_client_library_to_the_sensor(
    tmp_path: Path,
) -> None:
    imported = imported_by_code_location(
        BATCHINFER_HOME=str(tmp_path),
        BATCHINFER_QUEUE="pubsub",
        PUBSUB_EMULATOR_HOST="127.0.0.1:1",
    )
    assert imported["google.cloud.pubsub_v1"] is False


def test_the_vertex_code_location_still_gets_its_bigquery_resource(tmp_path: Path) -> None:
    imported = imported_by_code_location(
        BATCHINFER_HOME=str(tmp_path),
        BATCHINFER_FEATURE_STORE="vertex",
        BATCHINFER_VERTEX_PROJECT="p",
        BATCHINFER_VERTEX_BIGQUERY_TABLE="p.d.t",
    )
    assert imported["dagster_gcp"] is True
