"""Scale: a backlog of requests on the local defaults drains completely.

The size is ``RELIABILITY_SCALE_REQUESTS`` (default 10,000).

The full 100,000 lives in ``python -m bench.bench_backlog``; here the default batch size (512)
and pull (5,000) apply, as on a laptop. Tick durations are reported, not asserted.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from dagster import DagsterInstance

from batchinfer_dagster import db
from batchinfer_dagster.chunks import chunked
from batchinfer_dagster.defs.partitions import PREDICTION_BATCHES
from batchinfer_dagster.settings import Settings
from batchinfer_testing.daemon import run_daemon_loop
from batchinfer_testing.deployment import id_payloads, load_records, publish
from batchinfer_testing.invariants import Published, assert_invariants
from batchinfer_testing.model_server import ModelServer

# 10,000 take ~1.5-3 minutes of the suite on a 2-core machine (20 partitions); set a smaller
# RELIABILITY_SCALE_REQUESTS for a quick local run.
REQUESTS = int(os.environ.get("RELIABILITY_SCALE_REQUESTS", "10000"))


def test_backlog_drains_on_local_defaults(
    instance: DagsterInstance, model_server: ModelServer, tmp_path: Path
) -> None:
    settings = Settings(home=tmp_path, model_url=model_server.url, pull_timeout_seconds=0.3)
    try:
        records = load_records(settings, REQUESTS, words=4)
        for chunk in chunked(records, 5000):
            publish(settings, id_payloads(chunk))
        report = run_daemon_loop(instance, settings, expect=REQUESTS, max_seconds=900)
        counts = assert_invariants(settings, Published(valid=records), f"backlog of {REQUESTS:,}")
        partitions = instance.get_dynamic_partitions(PREDICTION_BATCHES)
        assert len(partitions) == math.ceil(REQUESTS / settings.batch_size)
        assert len(report.runs) == len(partitions)
        assert report.failed_runs == 0
        print(counts, f"ticks {report.ticks}, longest {report.longest_tick_s:.2f} s")
    finally:
        db.dispose_engines()
