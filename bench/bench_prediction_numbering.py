"""What migration 0007's numbering costs a settle: ``write_predictions`` with and without it.

Each arm is a fresh app database, SQLite and PostgreSQL (a throwaway server, as the tests start
one): the baseline migrated to 0006 (no prediction triggers), the other to 0007. Both write the
same batches through ``ledger.write_predictions`` (what a run's settle calls), each batch in a
transaction of its own: new rows (an insert per record), then the same records again (an upsert
that updates every row). Repeated, alternating the arms, and quoted as medians with the load
average beside each.

    python -m bench.bench_prediction_numbering --batch 512 --batches 20 --repeats 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa

from batchinfer_dagster import db, ledger
from batchinfer_dagster.prediction import configuration_of
from batchinfer_dagster.receipts import ModelIdentity, text_digest
from batchinfer_protocol.zero_shot import Prediction, PredictParameters
from batchinfer_testing.services import postgres_server
from bench.report import write_section

SECTION = "## Prediction change numbers: the settle's cost"
CONFIGURATION = configuration_of(PredictParameters(), ModelIdentity("org/model", "sha256:one"))
LABELS = list(PredictParameters().candidate_labels)


def migrated(url: str, revision: str) -> sa.Engine:
    from alembic import command

    engine = db.create_app_engine(url)
    with engine.begin() as connection:
        config = db._alembic_config()  # noqa: SLF001
        config.attributes["connection"] = connection
        command.upgrade(config, revision)
    return engine


def settle(engine: sa.Engine, batch: int, batches: int, *, offset: int) -> float:
    """Seconds to write ``batches`` batches of ``batch`` records, then the same ones again."""
    now = datetime.now(UTC)
    scores = [1.0 / len(LABELS)] * len(LABELS)
    started = time.perf_counter()
    for _ in range(2):
        for number in range(batches):
            ids = range(offset + number * batch, offset + (number + 1) * batch)
            with engine.begin() as connection:
                ledger.write_predictions(
                    connection,
                    {i: Prediction(f"t{i}", LABELS, scores) for i in ids},
                    configuration=CONFIGURATION,
                    text_digests={i: text_digest(f"t{i}") for i in ids},
                    batch_key="b",
                    run_id="r",
                    now=now,
                )
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-docs", action="store_true")
    args = parser.parse_args()
    rows = []
    with ExitStack() as stack, tempfile.TemporaryDirectory() as scratch:
        server = stack.enter_context(postgres_server())
        for dialect in ("sqlite", "postgresql"):
            arms: dict[str, sa.Engine] = {}
            for revision in ("0006", "0007"):
                if dialect == "sqlite":
                    url = f"sqlite:///{Path(scratch) / f'{revision}.db'}"
                else:
                    url = server.create_database(f"bench{revision}")
                arms[revision] = migrated(url, revision)
            times: dict[str, list[tuple[float, float]]] = {r: [] for r in arms}
            for repeat in range(args.repeats):
                for revision, engine in arms.items():
                    offset = repeat * args.batch * args.batches
                    seconds = settle(engine, args.batch, args.batches, offset=offset)
                    times[revision].append((seconds, os.getloadavg()[0]))
            base = statistics.median(s for s, _ in times["0006"])
            for revision, measured in times.items():
                median = statistics.median(s for s, _ in measured)
                load = statistics.median(load for _, load in measured)
                writes = 2 * args.batch * args.batches
                rows.append(
                    f"| {dialect} | {revision} | {median:.2f} | {writes / median:,.0f} | "
                    f"{median / base:.2f} | {load:.2f} |"
                )
                print(rows[-1], flush=True)
            for engine in arms.values():
                engine.dispose()
    markdown = "\n".join(
        [
            SECTION,
            "",
            f"`python -m bench.bench_prediction_numbering --batch {args.batch} --batches "
            f"{args.batches} --repeats {args.repeats}`: `ledger.write_predictions` (a settle's "
            f"write) of {args.batches} batches of {args.batch} new predictions, then the same "
            "again (upserts), each batch its own transaction, on a database at 0006 (no "
            "prediction triggers, the baseline) and one at 0007 (every prediction write "
            f"numbered). Medians of {args.repeats} alternating runs; the 1-minute load average "
            "beside each (a shared 2-core machine).",
            "",
            "| database | revision | median s | rows/s | × 0006 | load avg |",
            "|---|---|---:|---:|---:|---:|",
            *rows,
            "",
            "One writer at a time: concurrent settles on PostgreSQL also wait for each other on "
            "the counter row (held until each commits), which this does not measure.",
            "",
        ]
    )
    if not args.no_docs:
        write_section(SECTION, markdown)
    print(markdown)


if __name__ == "__main__":
    main()
