"""A rollout's throughput against a plain drain of the same records, in the same run.

One SQLite app database holds N records in the local feature store; the real model server
(embedding backend) answers. Each repeat measures, one after the other (the order alternates, so
a drift in load hits both alike):

- ``drain``: N requests written straight to the ledger (``ledger.create_batches``, as the
  launchpad does), then the real sensor and in-process ``predictions`` runs until every request
  is settled (``batchinfer_testing.daemon.run_daemon_loop``): the baseline;
- ``rollout``: ``rollout.start`` for the same N records under a candidate configuration (other
  label descriptions), then the same loop; afterwards ``rollout.discard`` deletes the candidate
  rows, so the next repeat predicts every record again.

Both go through the same sensor, runs, model server and settlement; the rollout adds the look-up
of the batch's candidate, the candidate's parameters (more text per label for the embedding
backend to encode) and the rollout's lock in the settlement. Quoted: median seconds and
records/s over the repeats, the ratio rollout/drain, and the 1-minute load average beside each.

    python -m bench.bench_rollout --records 2000 --repeat 3
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from dagster import DagsterInstance

from batchinfer_dagster import db, ledger, rollout
from batchinfer_dagster.prediction import configuration_of
from batchinfer_dagster.receipts import UNKNOWN, ModelIdentity
from batchinfer_dagster.settings import Settings
from batchinfer_protocol.zero_shot import PredictParameters
from batchinfer_testing.daemon import run_daemon_loop
from batchinfer_testing.deployment import (
    TEXTS,
    engine_of,
    local_feature_store,
    migrate,
    model_client_of,
)
from batchinfer_testing.model_server import running_model_server
from bench.report import write_section

SECTION = "## Rollout against a plain drain"
BATCH_SIZE = 256
# Run logs at WARNING: the console log of every event is not what is measured.
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
DESCRIPTIONS = {"billing": ("Money: payments, refunds, prices and the account's plan.",)}


def timed_loop(instance: DagsterInstance, settings: Settings, expect: int) -> float:
    """Seconds until the sensor and its runs have settled ``expect`` requests in all."""
    started = time.perf_counter()
    report = run_daemon_loop(instance, settings, expect=expect, max_seconds=3600, run_config=QUIET)
    seconds = time.perf_counter() - started
    if report.failed_runs:
        raise RuntimeError(f"{report.failed_runs} predictions runs failed")
    return seconds


def load() -> float:
    return os.getloadavg()[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-docs", action="store_true", help="do not update docs/benchmarks.md")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-rollout-"))
    try:
        with running_model_server(MODEL_WARMUP="false") as server:
            settings = Settings(
                home=work,
                database_url=f"sqlite:///{work / 'batchinfer.db'}",
                model_url=server.url,
                batch_size=BATCH_SIZE,
                batch_max_wait_seconds=0,
                # Nothing is published to the queue: a tick's empty pull returns at once.
                pull_timeout_seconds=0.1,
            )
            migrate(settings)
            engine = engine_of(settings)
            texts = [
                (i, f"{TEXTS[i % len(TEXTS)]} (ticket {i})") for i in range(1, args.records + 1)
            ]
            local_feature_store(settings).upsert(texts)
            ids = [i for i, _ in texts]
            client = model_client_of(settings)
            try:
                # Warm-up of both configurations' shapes (the server starts without its own).
                served = client.served_model()
                sample = [text for _, text in texts[:BATCH_SIZE]]
                client.predict(sample, PredictParameters())
                client.predict(sample, PredictParameters(label_descriptions=DESCRIPTIONS))
            finally:
                client.close()
            if served is None:
                raise RuntimeError("the model server reported no model")
            candidate = configuration_of(
                PredictParameters(label_descriptions=DESCRIPTIONS),
                ModelIdentity(served.model, served.model_digest or UNKNOWN),
            )
            written = 0
            samples: dict[str, list[tuple[float, float]]] = {"drain": [], "rollout": []}
            with DagsterInstance.ephemeral() as instance:

                def drain() -> float:
                    ledger.create_batches(
                        engine, ids, source="bench", batch_size=BATCH_SIZE, now=db.utcnow()
                    )
                    return timed_loop(instance, settings, written + len(ids))

                def roll() -> float:
                    rollout.start(engine, candidate, ids, batch_size=BATCH_SIZE, now=db.utcnow())
                    seconds = timed_loop(instance, settings, written + len(ids))
                    if rollout.progress(engine, candidate.digest).predicted != len(ids):
                        raise RuntimeError("the rollout did not predict every record")
                    rollout.discard(engine, candidate.digest)
                    return seconds

                kinds: dict[str, Callable[[], float]] = {"drain": drain, "rollout": roll}
                # Written once before timing: the first drain makes the current predictions.
                drain()
                written += len(ids)
                for repeat in range(args.repeat):
                    order = ["drain", "rollout"] if repeat % 2 == 0 else ["rollout", "drain"]
                    for kind in order:
                        before = load()
                        seconds = kinds[kind]()
                        written += len(ids)
                        samples[kind].append((seconds, max(before, load())))
                        print(f"  {kind:7s} {seconds:6.1f} s  load {samples[kind][-1][1]:.2f}")
        medians = {k: statistics.median(s for s, _ in v) for k, v in samples.items()}
        lines = [
            SECTION,
            "",
            f"`python -m bench.bench_rollout --records {args.records} --repeat {args.repeat}`: "
            f"{args.records} records, batches of {BATCH_SIZE}, SQLite, the embedding model "
            "server on CPU, the real sensor and in-process `predictions` runs. Each repeat "
            "drains the records as ordinary requests and predicts them as a rollout under other "
            "label descriptions, alternating the order; medians, each run's seconds with the "
            "1-minute load average (the larger of before and after) beside it (a shared 2-core "
            "machine).",
            "",
            "| path | median s | records/s | × drain | runs (s @ load) |",
            "|---|---:|---:|---:|---|",
        ]
        for kind in ("drain", "rollout"):
            runs = ", ".join(f"{s:.1f} @ {load_:.1f}" for s, load_ in samples[kind])
            lines.append(
                f"| {kind} | {medians[kind]:.1f} | {args.records / medians[kind]:.0f} "
                f"| {medians[kind] / medians['drain']:.2f} | {runs} |"
            )
        lines += [
            "",
            "A rollout is the drain's machinery with the candidate's parameters: the same "
            "sensor, runs, pool and settlement. What differs is the parameters sent (the "
            "candidate's label descriptions are more text for the embedding backend to encode "
            "per label) and, per batch, one look-up of its rollout and a lock on the rollout's "
            "row in the settling transaction.",
        ]
        markdown = "\n".join(lines) + "\n"
        print(markdown)
        if not args.no_docs:
            write_section(SECTION, markdown)
    finally:
        db.dispose_engines()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
