"""Rollout's data model on SQLite and PostgreSQL: the report computed in SQL against a hand
count, promote in one transaction (a concurrent reader never sees a mix), discard."""

from __future__ import annotations

import threading
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from batchinfer_dagster import db, ledger, rollout
from batchinfer_dagster.prediction import configuration_of
from batchinfer_dagster.receipts import Configuration, ModelIdentity, text_digest
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


def settle(
    engine: sa.Engine,
    key: str,
    record_ids: list[int],
    *,
    seconds: float | None,
    configuration: Configuration,
    rollout_digest: str | None = None,
) -> None:
    """Settle ledger batch ``key`` as a run whose model call took ``seconds`` would."""
    requests = ledger.start_batch(engine, key, run_id=f"run-{key}", now=NOW)
    ledger.settle_batch(
        engine,
        ledger.Settlement(
            batch_key=key,
            run_id=f"run-{key}",
            requests=requests,
            configuration=configuration,
            answers={i: Prediction(f"t{i}", ["billing", "other"], [0.6, 0.4]) for i in record_ids},
            text_digests={i: text_digest(f"t{i}") for i in record_ids},
            feature_wait=timedelta(minutes=10),
            now=NOW,
            rollout=rollout_digest,
            model_seconds=seconds,
        ),
    )


def test_the_report_gives_each_sides_measured_texts_per_second(app_settings: Settings) -> None:
    """Σ predicted / Σ model seconds over each side's batches: the current side's are those
    that wrote the compared records' current rows, the candidate's its rollout's batches.
    Unequal batches tell the ratio of sums (4 / 1.0 s) from a mean of rates (6.67)."""
    engine = engine_of(app_settings)

    def ordinary(record_ids: list[int], seconds: float | None) -> None:
        (key,) = ledger.create_batches(engine, record_ids, source="t", batch_size=99, now=NOW)
        settle(engine, key, record_ids, seconds=seconds, configuration=CURRENT)

    ordinary([1, 2, 3], 1.5)
    ordinary([4], None)  # settled before 0010 (or without a model call): no measure
    ordinary([9], 100.0)  # a record the rollout does not compare
    keys = rollout.start(engine, CANDIDATE, [1, 2, 3, 4], batch_size=3, now=NOW).batch_keys
    before = rollout.report(engine, CANDIDATE.digest)
    assert before.texts_per_second == {"current": None, "candidate": None}  # nothing compared

    settle(
        engine,
        keys[0],
        [1, 2, 3],
        seconds=0.25,
        configuration=CANDIDATE,
        rollout_digest=CANDIDATE.digest,
    )
    settle(
        engine, keys[1], [4], seconds=0.75, configuration=CANDIDATE, rollout_digest=CANDIDATE.digest
    )

    batches = {r.batch_key: r for r in rows(app_settings, db.prediction_batches)}
    assert (batches[keys[0]].predicted, batches[keys[0]].model_seconds) == (3, 0.25)
    found = rollout.report(engine, CANDIDATE.digest)
    assert found.compared == 4
    assert found.texts_per_second == {"current": 2.0, "candidate": 4.0}
    assert found.as_json()["texts_per_second"] == {"current": 2.0, "candidate": 4.0}
