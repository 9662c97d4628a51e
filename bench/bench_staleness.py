"""Staleness detection at scale: the stored-digest query against re-reading the feature store.

One SQLite app database (migrated by the real migrations) gets N current predictions under one
configuration, N record text digests and N feature rows, of which 1 % were edited since their
prediction. Then, each repeated and quoted as the median with the load average beside it:

- ``count``: ``SELECT count(*) FROM predictions`` (what ``status`` counted before): the floor;
- ``stale_counts``: the staleness query of ``status`` and the asset check (one pass, a SUM per
  cause, joins on primary keys), for the deployment's configuration (1 % stale) and for another
  label set (100 % stale);
- ``iter_stale``: every stale record id, paged by keyset (``predict --stale``'s read);
- ``rehash_features``: what detection would cost without stored digests: read every text of the
  feature store and hash it (the baseline the design avoids).

    python -m bench.bench_staleness --predictions 1000000
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa

from batchinfer_dagster import db
from batchinfer_dagster.prediction import configuration_of, parameters_of
from batchinfer_dagster.receipts import ModelIdentity, text_digest
from batchinfer_dagster.staleness import Deployment, iter_stale, stale_counts
from batchinfer_protocol.zero_shot import PredictParameters
from batchinfer_testing.deployment import TEXTS
from bench.report import write_section

SECTION = "## Staleness detection"
MODEL = ModelIdentity("sentence-transformers/all-MiniLM-L6-v2", "unknown")
CURRENT = PredictParameters()
OTHER = PredictParameters(label_descriptions={"billing": ("Money: payments and refunds.",)})
EDITED_EVERY = 100  # 1 % of the records were edited after their prediction
INSERT_CHUNK = 20_000


def fill(engine: sa.Engine, count: int) -> None:
    """N features, digests and current predictions; every 100th text edited since."""
    now = datetime.now(UTC)
    configuration = configuration_of(CURRENT, MODEL)
    with engine.begin() as connection:
        connection.execute(
            db.prediction_configurations.insert().values(
                digest=configuration.digest,
                model=MODEL.name,
                model_digest=MODEL.weights_digest,
                known=True,
                parameters_digest=configuration.parameters.digest,
                candidate_labels=list(CURRENT.candidate_labels),
                label_descriptions={},
                label_descriptions_digest=configuration.parameters.label_descriptions_digest,
                multi_label=False,
                created_at=now,
            )
        )
    for start in range(1, count + 1, INSERT_CHUNK):
        ids = range(start, min(start + INSERT_CHUNK, count + 1))
        texts = {i: f"{TEXTS[i % len(TEXTS)]} (ticket {i})" for i in ids}
        current = {
            i: text + (" edited" if i % EDITED_EVERY == 0 else "") for i, text in texts.items()
        }
        with engine.begin() as connection:
            connection.execute(
                db.features.insert(),
                [{"record_id": i, "text": current[i], "feature_timestamp": now} for i in ids],
            )
            connection.execute(
                db.record_text_digests.insert(),
                [
                    {"record_id": i, "text_digest": text_digest(current[i]), "imported_at": now}
                    for i in ids
                ],
            )
            connection.execute(
                db.predictions.insert(),
                [
                    {
                        "record_id": i,
                        "configuration": configuration.digest,
                        "model": MODEL.name,
                        "sequence": texts[i],
                        "labels": ["billing", "mobile", "website", "account access"],
                        "scores": [0.4, 0.3, 0.2, 0.1],
                        "batch_key": "b",
                        "run_id": "r",
                        "created_at": now,
                        "updated_at": now,
                        "text_digest": text_digest(texts[i]),
                        "is_current": True,
                    }
                    for i in ids
                ],
            )


def timed(repeat: int, step: Callable[[], object]) -> tuple[float, float, object]:
    """Median seconds of ``repeat`` runs, the 1-minute load average after them, the last result."""
    seconds: list[float] = []
    result: object = None
    for _ in range(repeat):
        started = time.perf_counter()
        result = step()
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds), os.getloadavg()[0], result


def rehash_features(engine: sa.Engine) -> int:
    """The baseline: every text of the feature store read and hashed, compared in Python."""
    stored: dict[int, str] = {}
    with engine.connect() as connection:
        for record_id, digest in connection.execute(
            sa.select(db.predictions.c.record_id, db.predictions.c.text_digest)
        ):
            stored[record_id] = digest
        stale = 0
        for record_id, text in connection.execute(
            sa.select(db.features.c.record_id, db.features.c.text)
        ):
            stale += stored.get(record_id) != text_digest(text)
    return stale


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--predictions", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--no-docs", action="store_true", help="print only")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        url = f"sqlite:///{Path(folder) / 'bench.db'}"
        engine = db.create_app_engine(url)
        db.upgrade(engine)
        started = time.perf_counter()
        fill(engine, args.predictions)
        fill_seconds = time.perf_counter() - started
        current = Deployment(parameters_of(CURRENT), MODEL)
        other = Deployment(parameters_of(OTHER), MODEL)

        def count() -> int:
            with engine.connect() as connection:
                return connection.execute(
                    sa.select(sa.func.count()).select_from(db.predictions)
                ).scalar_one()

        rows = [
            ("count(*) of predictions (floor)", *timed(args.repeat, count)),
            ("stale_counts, 1 % stale", *timed(args.repeat, lambda: stale_counts(engine, current))),
            ("stale_counts, 100 % stale", *timed(args.repeat, lambda: stale_counts(engine, other))),
            (
                "iter_stale, 1 % stale (all pages)",
                *timed(args.repeat, lambda: sum(len(p) for p in iter_stale(engine, current))),
            ),
            (
                "re-read and hash the feature store (baseline)",
                *timed(max(1, args.repeat // 2), lambda: rehash_features(engine)),
            ),
        ]
        size_mib = Path(url.split(":///", 1)[1]).stat().st_size / 2**20
        engine.dispose()
    baseline = rows[-1][1]
    floor = rows[0][1]
    lines = [
        SECTION,
        "",
        f"`python -m bench.bench_staleness --predictions {args.predictions}` on SQLite "
        f"({size_mib:.0f} MiB database, filled in {fill_seconds:.0f} s): every record has one "
        "current prediction; 1 % of the texts were edited and imported since. Medians of "
        f"{args.repeat} runs (the baseline of {max(1, args.repeat // 2)}); the 1-minute load "
        "average beside each (a shared 2-core machine).",
        "",
        "| query | median s | × count(*) | × baseline | load avg | result |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for name, seconds, load, result in rows:
        lines.append(
            f"| {name} | {seconds:.2f} | {seconds / floor:.1f} | {seconds / baseline:.2f} "
            f"| {load:.2f} | {result} |"
        )
    lines += [
        "",
        "Staleness detection compares digests stored in the app database, so it never reads "
        "the feature store (a Vertex feature store would cost one online read per record); its "
        "cost is one pass over the current predictions with primary-key lookups.",
    ]
    markdown = "\n".join(lines) + "\n"
    print(markdown)
    if not args.no_docs:
        write_section(SECTION, markdown)


if __name__ == "__main__":
    main()
