"""Rollout's data model on SQLite and PostgreSQL: the report computed in SQL against a hand
count, promote in one transaction (a concurrent reader never sees a mix), discard."""

from __future__ import annotations

import threading
from collections import Counter
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa

from batchinfer_dagster import db, ledger, rollout
from batchinfer_dagster.prediction import configuration_of
from batchinfer_dagster.receipts import ModelIdentity, text_digest
from batchinfer_dagster.settings import Settings
from batchinfer_protocol.zero_shot import Prediction, PredictParameters
from batchinfer_testing.deployment import engine_of, rows

NOW = datetime(2026, 12, 5, 9, 0, tzinfo=UTC)
MODEL = ModelIdentity("org/model", "sha256:one")
CURRENT = configuration_of(PredictParameters(), MODEL)
CANDIDATE = configuration_of(PredictParameters(hypothesis_template="About {}."), MODEL)


def write(engine: sa.Engine, answers: dict[int, tuple[str, float]], *, candidate: bool) -> None:
    """Predictions whose top label and score are given; the other label gets the rest."""
    predictions = {
        i: Prediction(f"t{i}", [top, "other" if top != "other" else "x"], [score, 1 - score])
        for i, (top, score) in answers.items()
    }
    with engine.begin() as connection:
        ledger.write_predictions(
            connection,
            predictions,
            configuration=CANDIDATE if candidate else CURRENT,
            text_digests={i: text_digest(f"t{i}") for i in answers},
            batch_key="b",
            run_id="r",
            now=NOW,
            current=not candidate,
        )


def test_the_report_matches_a_hand_count(app_settings: Settings) -> None:
    engine = engine_of(app_settings)
    write(
        engine,
        {1: ("billing", 0.9), 2: ("billing", 0.6), 3: ("mobile", 0.7), 4: ("mobile", 0.5)},
        candidate=False,
    )
    write(
        engine,
        {1: ("billing", 0.8), 2: ("mobile", 0.9), 3: ("mobile", 0.7), 4: ("billing", 0.55)},
        candidate=True,
    )
    # Candidate rows are never current: readers and staleness still see the current ones.
    assert {
        r.configuration for r in rows(app_settings, db.predictions, db.predictions.c.is_current)
    } == {CURRENT.digest}

    found = rollout.report(engine, CANDIDATE.digest)
    assert found.compared == 4
    assert found.agreement == 0.5  # records 1 and 3
    assert found.confusion == {
        "billing": {"billing": 1, "mobile": 1},
        "mobile": {"mobile": 1, "billing": 1},
    }
    assert found.flip_rates() == {"billing": 0.5, "mobile": 0.5}
    # |Δ top score|: 0.1, 0.3, 0.0, 0.05 → mean 0.1125.
    assert found.mean_abs_top_score_delta == pytest.approx(0.1125)
    assert [d["record_id"] for d in found.disagreements] == [2, 4]  # largest |Δ| first

    with pytest.raises(rollout.UnknownCandidateError):
        rollout.report(engine, "0" * 64)


def test_promote_is_one_transaction_and_discard_keeps_the_current(app_settings: Settings) -> None:
    engine = engine_of(app_settings)
    count = 2000
    write(engine, dict.fromkeys(range(1, count + 1), ("billing", 0.6)), candidate=False)
    write(engine, dict.fromkeys(range(1, count + 1), ("mobile", 0.7)), candidate=True)
    seen: list[Counter] = []
    stop = threading.Event()

    def read() -> None:
        table = db.predictions
        with engine.connect() as connection:
            while not stop.is_set():
                seen.append(
                    Counter(
                        dict(
                            connection.execute(
                                sa.select(table.c.configuration, sa.func.count())
                                .where(table.c.is_current.is_(True))
                                .group_by(table.c.configuration)
                            ).all()
                        )
                    )
                )
                connection.rollback()

    reader = threading.Thread(target=read)
    reader.start()
    try:
        assert rollout.promote(engine, CANDIDATE.digest) == count
    finally:
        stop.set()
        reader.join()
    assert seen
    allowed = ({CURRENT.digest: count}, {CANDIDATE.digest: count})
    mixed = [s for s in seen if s not in allowed]
    assert not mixed, mixed[:3]
    stored = rows(app_settings, db.predictions)
    assert len(stored) == 2 * count  # the replaced rows stay, queryable by configuration
    assert {r.configuration for r in stored if r.is_current} == {CANDIDATE.digest}

    # Discarding the old configuration now drops its rows, never a current one.
    assert rollout.discard(engine, CURRENT.digest) == count
    assert len(rows(app_settings, db.predictions)) == count
    assert rollout.discard(engine, CANDIDATE.digest) == 0


def test_a_cut_off_rollout_resumes_with_the_records_it_did_not_reach(
    app_settings: Settings,
) -> None:
    engine = engine_of(app_settings)
    write(engine, dict.fromkeys((1, 2, 3), ("billing", 0.6)), candidate=False)
    write(engine, {1: ("mobile", 0.7)}, candidate=True)
    assert rollout.without_candidate(engine, [3, 1, 2, 2], CANDIDATE.digest) == [2, 3]
