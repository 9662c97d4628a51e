"""One arm of `bench_first_hour`, run as a script with *that arm's* code first on ``PYTHONPATH``.

Why a child process: the harness's own database steps (migrate, write the features, publish,
count predictions) must speak the schema of the code under test. The baseline commit 3509ab4
knows migrations up to 0003, and its ``db.check_schema`` refuses any other revision (see
``SchemaOutOfDateError``); a harness that migrates with this tree's code puts the database at
this tree's head, and every sensor tick of the baseline then fails, so it never predicts. Run
by path (``python bench/first_hour_arm.py …``), so only the arm's ``batchinfer_dagster`` and
``batchinfer_testing`` are imported. It uses only what both trees have: ``migrate``,
``local_feature_store``, ``open_queue``, ``engine_of``, ``TEXTS`` and ``db.predictions``.

``prepare HOME MODEL_URL COUNT``: migrate and write features for record ids 1..COUNT.
``measure HOME MODEL_URL SAMPLES DRAIN``: with ``dg dev`` already running on HOME, one warm-up
request (id 1), SAMPLES single requests (ids 2..SAMPLES+1, each 0-5 s after the previous one is
readable), then DRAIN requests published at once; prints one JSON line ``{"latencies": [s, …],
"latency_loads": [loadavg, …], "drain_seconds": s, "drain_load": loadavg, "publishes": [[unix s,
first id, last id], …]}`` (each single's publish, then the drain's: ``first_hour_timeline``).
"""

from __future__ import annotations

import json
import random
import sys
import time
from pathlib import Path

import sqlalchemy as sa

from batchinfer_dagster import db
from batchinfer_dagster.settings import Settings
from batchinfer_testing.deployment import TEXTS, engine_of, local_feature_store, migrate, open_queue

SINGLE_TIMEOUT_S = 300
WARM_UP_TIMEOUT_S = 600
DRAIN_TIMEOUT_S = 3600


def load_average() -> str:
    """``/proc/loadavg``'s 1, 5 and 15 minute figures."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def predicted(engine: sa.Engine, record_ids: range) -> int:
    """How many of ``record_ids`` have a prediction row (what ``batchinfer prediction`` reads)."""
    table = db.predictions
    with engine.connect() as connection:
        return connection.execute(
            sa.select(sa.func.count(sa.distinct(table.c.record_id))).where(
                table.c.record_id.between(record_ids.start, record_ids.stop - 1)
            )
        ).scalar_one()


def wait_until_predicted(engine: sa.Engine, record_ids: range, timeout: float) -> float:
    """Seconds until every record of ``record_ids`` has a prediction row."""
    started = time.monotonic()
    while predicted(engine, record_ids) < len(record_ids):
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"records {record_ids} not predicted after {timeout:.0f} s")
        time.sleep(0.05)
    return time.monotonic() - started


def prepare(settings: Settings, count: int) -> None:
    migrate(settings)
    local_feature_store(settings).upsert(
        [(i, f"{TEXTS[i % len(TEXTS)]} (ticket {i})") for i in range(1, count + 1)]
    )


def measure(settings: Settings, samples: int, drain: int) -> dict[str, object]:
    rng = random.Random(7)
    engine = engine_of(settings)
    queue = open_queue(settings)
    result: dict[str, object] = {"latencies": [], "latency_loads": [], "publishes": []}
    try:
        queue.publish([b'{"id": "1"}'])  # warm-up: code server, daemon, first run
        wait_until_predicted(engine, range(1, 2), WARM_UP_TIMEOUT_S)
        for record_id in range(2, samples + 2):
            time.sleep(rng.uniform(0, 5))
            result["publishes"].append([time.time(), record_id, record_id])
            queue.publish([json.dumps({"id": str(record_id)}).encode()])
            seconds = wait_until_predicted(
                engine, range(record_id, record_id + 1), SINGLE_TIMEOUT_S
            )
            result["latencies"].append(seconds)
            result["latency_loads"].append(load_average())
            print(
                f"  single {record_id - 1}/{samples}: {seconds:.1f} s", file=sys.stderr, flush=True
            )
        if drain:
            backlog = range(samples + 2, samples + 2 + drain)
            payloads = [json.dumps({"id": str(i)}).encode() for i in backlog]
            result["publishes"].append([time.time(), backlog.start, backlog.stop - 1])
            queue.publish(payloads)
            result["drain_seconds"] = wait_until_predicted(engine, backlog, DRAIN_TIMEOUT_S)
            result["drain_load"] = load_average()
    finally:
        queue.close()
        engine.dispose()
    return result


def main() -> None:
    command, home, model_url, *counts = sys.argv[1:]
    settings = Settings(home=Path(home), model_url=model_url)
    if command == "prepare":
        prepare(settings, int(counts[0]))
    elif command == "measure":
        print(json.dumps(measure(settings, int(counts[0]), int(counts[1]))))
    else:
        raise SystemExit(f"unknown command {command!r}: prepare or measure")


if __name__ == "__main__":
    main()
