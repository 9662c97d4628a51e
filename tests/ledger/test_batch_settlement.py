"""A run's batch in the ledger: started, failed, settled, and the prediction rows it leaves.

Every test keeps a bystander (another batch, another record, another configuration's row) beside
what it acts on, and unequal values where a mix-up could hide (message ids inserted against
their sort order, a time that differs from the one before), so an update that reaches too far,
a column left out or a flag turned around shows.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from batchinfer_dagster import db, ledger
from batchinfer_dagster.clients.queue import ReceivedMessage
from batchinfer_dagster.ledger.dead_letters import MAX_ERROR_CHARS
from batchinfer_dagster.receipts import Configuration, ModelIdentity, Parameters
from batchinfer_dagster.settings import Settings
from batchinfer_protocol.zero_shot import Prediction
from batchinfer_testing.deployment import engine_of, rows

NOW = datetime(2026, 12, 5, 9, 0, tzinfo=UTC)
LATER = NOW + timedelta(minutes=1)
R = ledger.RequestStatus
B = ledger.BatchStatus
PARAMETERS = Parameters(
    candidate_labels=("sports", "politics"),
    hypothesis_template="This text is about {}.",
    label_descriptions={"sports": ["games", "athletes"], "weather": ["not a candidate"]},
    multi_label=True,
)
CONFIG_A = Configuration(ModelIdentity("tiny-nli", "sha256:aaa"), PARAMETERS)
CONFIG_B = Configuration(ModelIdentity("tiny-nli", "sha256:bbb"), PARAMETERS)


def answer(record_id: int) -> Prediction:
    return Prediction(f"text {record_id}", ["sports", "politics"], [0.75, 0.25])


def requests_by_record(settings: Settings) -> dict[int, sa.Row]:
    return {row.record_id: row for row in rows(settings, db.prediction_requests)}


def batch_row(settings: Settings, key: str) -> sa.Row:
    [row] = rows(settings, db.prediction_batches, db.prediction_batches.c.batch_key == key)
    return row


def prediction_rows(settings: Settings) -> dict[tuple[int, str], sa.Row]:
    return {(row.record_id, row.configuration): row for row in rows(settings, db.predictions)}


def current(settings: Settings) -> dict[int, str]:
    """Record id → the configuration of its current row."""
    return {r: c for (r, c), row in prediction_rows(settings).items() if row.is_current}


def write(engine: sa.Engine, record_ids: list[int], config: Configuration, **kw: object) -> None:
    with engine.begin() as connection:
        ledger.write_predictions(
            connection,
            {r: answer(r) for r in record_ids},
            configuration=config,
            text_digests={r: f"digest-{r}" for r in record_ids},
            batch_key=str(kw.pop("batch_key", "batch-1")),
            run_id=str(kw.pop("run_id", "run-1")),
            now=NOW,
            **kw,  # type: ignore[arg-type]
        )


def test_start_batch_marks_it_running_and_reads_its_requests_in_message_order(
    app_settings: Settings,
) -> None:
    """Messages inserted as b, a, c come back a, b, c; a request waiting for features and
    another batch's request are left out; done ones are read with their status."""
    engine = engine_of(app_settings)
    pull = [
        ReceivedMessage(mid, f"ack-{mid}", ledger.request_payload(record), 1, NOW)
        for mid, record in (("b", 20), ("a", 10), ("c", 30), ("d", 40))
    ]
    result = ledger.ingest_messages(engine, pull, queue="local", batch_size=4, now=NOW)
    (key,) = result.batch_keys
    (other,) = ledger.create_batches(engine, [50], source="t", batch_size=8, now=NOW)
    table = db.prediction_requests
    with engine.begin() as connection:
        connection.execute(table.update().where(table.c.record_id == 30).values(status=R.DONE))
        connection.execute(
            table.update().where(table.c.record_id == 40).values(status=R.WAITING_FEATURES)
        )

    read = ledger.start_batch(engine, key, run_id="run-7", now=LATER)

    assert [(r.record_id, r.status, r.attempts, r.received_at) for r in read] == [
        (10, R.QUEUED, 0, NOW),
        (20, R.QUEUED, 0, NOW),
        (30, R.DONE, 0, NOW),
    ]
    assert [r.message_id for r in read] == sorted(r.message_id for r in read)
    started = batch_row(app_settings, key)
    assert (started.status, started.run_id, started.updated_at) == (B.RUNNING, "run-7", LATER)
    assert batch_row(app_settings, other).status == B.QUEUED


def test_start_batch_of_an_unknown_key_says_where_batches_come_from(
    app_settings: Settings,
) -> None:
    with pytest.raises(
        ledger.UnknownBatchError,
        match=r"^batch 'nope' is not in prediction_batches: partitions are created by the "
        r"sensor or request_predictions_job, not by hand$",
    ):
        ledger.start_batch(engine_of(app_settings), "nope", run_id="r", now=NOW)


def test_fail_batch_charges_its_queued_requests_only(app_settings: Settings) -> None:
    engine = engine_of(app_settings)
    (key,) = ledger.create_batches(engine, [1, 2], source="t", batch_size=8, now=NOW)
    (other,) = ledger.create_batches(engine, [3], source="t", batch_size=8, now=NOW)
    ledger.start_batch(engine, key, run_id="r", now=NOW)
    ledger.start_batch(engine, other, run_id="r-other", now=NOW)
    table = db.prediction_requests
    with engine.begin() as connection:
        connection.execute(table.update().where(table.c.record_id == 2).values(status=R.DONE))

    ledger.fail_batch(engine, key, error="e" * (MAX_ERROR_CHARS + 1), now=LATER)

    failed = batch_row(app_settings, key)
    assert (failed.status, failed.updated_at) == (B.FAILED, LATER)
    assert batch_row(app_settings, other).status == B.RUNNING
    requests = requests_by_record(app_settings)
    assert (requests[1].error, requests[1].updated_at) == ("e" * MAX_ERROR_CHARS, LATER)
    assert (requests[2].error, requests[2].updated_at) == (None, NOW)
    assert (requests[3].error, requests[3].updated_at) == (None, NOW)


@pytest.mark.parametrize(
    ("attempts", "seconds"), [(0, 5), (1, 10), (2, 20), (3, 40), (4, 60), (10**6, 60)]
)
def test_feature_backoff_doubles_from_5_s_and_stops_at_60_s(attempts: int, seconds: int) -> None:
    assert ledger.feature_backoff(attempts) == timedelta(seconds=seconds)


def test_a_new_configuration_takes_over_as_current_and_the_old_row_stays(
    app_settings: Settings,
) -> None:
    engine = engine_of(app_settings)
    write(engine, [1, 2], CONFIG_A)
    write(engine, [1], CONFIG_B, batch_key="batch-2", run_id="run-2")

    assert current(app_settings) == {1: CONFIG_B.digest, 2: CONFIG_A.digest}
    stored = prediction_rows(app_settings)
    assert set(stored) == {(1, CONFIG_A.digest), (1, CONFIG_B.digest), (2, CONFIG_A.digest)}
    new = stored[(1, CONFIG_B.digest)]
    assert (new.batch_key, new.run_id, new.text_digest, new.model) == (
        "batch-2",
        "run-2",
        "digest-1",
        "tiny-nli",
    )
    assert (new.sequence, new.labels, new.scores) == (
        "text 1",
        ["sports", "politics"],
        [0.75, 0.25],
    )

    # Back to A: its own row is updated in place and current again, no second row.
    write(engine, [1], CONFIG_A, batch_key="batch-3", run_id="run-3")
    assert current(app_settings) == {1: CONFIG_A.digest, 2: CONFIG_A.digest}
    again = prediction_rows(app_settings)
    assert len(again) == 3
    assert (again[(1, CONFIG_A.digest)].batch_key, again[(1, CONFIG_A.digest)].run_id) == (
        "batch-3",
        "run-3",
    )


def test_candidate_rows_leave_every_current_row_as_it_is(app_settings: Settings) -> None:
    """``current=False`` writes beside the current row, even over a row of its own
    configuration that is current."""
    engine = engine_of(app_settings)
    write(engine, [1, 2], CONFIG_A)
    write(engine, [1], CONFIG_B, current=False)
    write(engine, [2], CONFIG_A, current=False, run_id="run-candidate")

    assert current(app_settings) == {1: CONFIG_A.digest, 2: CONFIG_A.digest}
    stored = prediction_rows(app_settings)
    assert stored[(1, CONFIG_B.digest)].is_current is False
    assert stored[(2, CONFIG_A.digest)].run_id == "run-candidate"


def test_a_configuration_is_registered_once_with_what_made_it(app_settings: Settings) -> None:
    engine = engine_of(app_settings)
    write(engine, [1], CONFIG_A)
    write(engine, [2], CONFIG_A)

    [row] = rows(app_settings, db.prediction_configurations)
    assert row._asdict() == {
        "digest": CONFIG_A.digest,
        "model": "tiny-nli",
        "model_digest": "sha256:aaa",
        "known": True,
        "parameters_digest": PARAMETERS.digest,
        "candidate_labels": ["sports", "politics"],
        "hypothesis_template": "This text is about {}.",
        "label_descriptions": {"sports": ["games", "athletes"]},
        "label_descriptions_digest": PARAMETERS.label_descriptions_digest,
        "multi_label": True,
        "created_at": NOW,
    }


def started(engine: sa.Engine, record_ids: list[int]) -> tuple[str, list[ledger.BatchRequest]]:
    (key,) = ledger.create_batches(engine, record_ids, source="t", batch_size=99, now=NOW)
    return key, ledger.start_batch(engine, key, run_id="run-1", now=NOW)


def settlement(key: str, requests: list[ledger.BatchRequest], **kw: object) -> ledger.Settlement:
    values: dict[str, object] = {
        "batch_key": key,
        "run_id": "run-9",
        "requests": requests,
        "configuration": CONFIG_A,
        "answers": {},
        "feature_wait": timedelta(minutes=10),
        "now": LATER,
    }
    values.update(kw)
    return ledger.Settlement(**values)  # type: ignore[arg-type]


def open_dead_letter(engine: sa.Engine, record_id: int) -> None:
    with engine.begin() as connection:
        connection.execute(
            db.dead_letters.insert().values(
                source="ledger",
                payload="{}",
                reason="unknown record id",
                received_at=NOW,
                record_id=record_id,
            )
        )


def test_settle_batch_counts_every_outcome_and_touches_only_its_batch(
    app_settings: Settings,
) -> None:
    """Predicted (its earlier error cleared), refused with the server's reason, missing past
    the wait, missing within it; a bystander batch stays queued."""
    engine = engine_of(app_settings)
    key, requests = started(engine, [1, 2, 3])
    (other,) = ledger.create_batches(engine, [1], source="t", batch_size=8, now=NOW)
    ledger.start_batch(engine, other, run_id="run-other", now=NOW)
    table = db.prediction_requests
    with engine.begin() as connection:  # an earlier attempt's error
        connection.execute(
            table.update().where(table.c.batch_key == key).values(error="model server down")
        )
    (late,) = ledger.create_batches(engine, [4], source="t", batch_size=8, now=LATER)
    late_requests = ledger.start_batch(engine, late, run_id="run-1", now=LATER)
    open_dead_letter(engine, 1)

    outcome = ledger.settle_batch(
        engine,
        settlement(
            key,
            requests,
            answers={1: answer(1)},
            refused={2: "text too long: 600 tokens"},
            feature_wait=timedelta(0),
            text_digests={1: "d1"},
        ),
    )

    assert outcome == (0, 2)
    by_message = {r.message_id: r for r in rows(app_settings, db.prediction_requests)}
    mine = [by_message[r.message_id] for r in requests]
    assert [(r.status, r.error, r.updated_at) for r in mine[:1]] == [(R.DONE, None, LATER)]
    assert mine[1].status == mine[2].status == R.DEAD_LETTERED
    letters = {row.record_id: row for row in rows(app_settings, db.dead_letters)}
    assert letters[2].reason == "text too long: 600 tokens"
    assert letters[2].source == ledger.DeadLetterSource.MODEL
    assert (letters[1].resolved_at, letters[1].resolved_by_run) == (LATER, "run-9")
    settled = batch_row(app_settings, key)
    assert (settled.status, settled.updated_at) == (B.SUCCEEDED, LATER)
    assert batch_row(app_settings, other).status == B.RUNNING
    (bystander,) = [r for r in rows(app_settings, db.prediction_requests) if r.batch_key == other]
    assert (bystander.status, bystander.updated_at) == (R.QUEUED, NOW)
    stored = prediction_rows(app_settings)[(1, CONFIG_A.digest)]
    assert (stored.batch_key, stored.run_id, stored.is_current) == (key, "run-9", True)

    waiting = ledger.settle_batch(
        engine, settlement(late, late_requests, now=LATER + timedelta(seconds=1))
    )
    assert waiting == (1, 0)
    [row] = [r for r in rows(app_settings, db.prediction_requests) if r.record_id == 4]
    assert (row.status, row.attempts, row.updated_at) == (
        R.WAITING_FEATURES,
        1,
        LATER + timedelta(seconds=1),
    )


def test_answers_without_a_configuration_are_refused(app_settings: Settings) -> None:
    engine = engine_of(app_settings)
    key, requests = started(engine, [1])
    with pytest.raises(
        ValueError,
        match=r"^batch \S+: 1 predictions without the configuration that made them; a "
        r"Settlement with answers needs one$",
    ):
        ledger.settle_batch(
            engine, settlement(key, requests, configuration=None, answers={1: answer(1)})
        )


def test_a_batch_given_up_on_stays_dead_lettered_when_its_run_settles_late(
    app_settings: Settings,
) -> None:
    engine = engine_of(app_settings)
    key, requests = started(engine, [1])
    ledger.dead_letter_batch(engine, key, reason="out of attempts", now=NOW)

    ledger.settle_batch(
        engine, settlement(key, requests, answers={1: answer(1)}, text_digests={1: "d"})
    )

    assert batch_row(app_settings, key).status == B.DEAD_LETTERED


def rollout(engine: sa.Engine, status: str) -> str:
    candidate = CONFIG_B.digest
    with engine.begin() as connection:
        connection.execute(
            db.rollouts.insert().values(
                candidate=candidate, status=status, created_at=NOW, updated_at=NOW
            )
        )
    return candidate


def test_a_running_rollouts_batch_writes_candidate_rows_and_keeps_dead_letters_open(
    app_settings: Settings,
) -> None:
    engine = engine_of(app_settings)
    write(engine, [1], CONFIG_A)
    open_dead_letter(engine, 1)
    candidate = rollout(engine, "running")
    key, requests = started(engine, [1])

    ledger.settle_batch(
        engine,
        settlement(
            key,
            requests,
            configuration=CONFIG_B,
            answers={1: answer(1)},
            text_digests={1: "d"},
            rollout=candidate,
        ),
    )

    assert current(app_settings) == {1: CONFIG_A.digest}
    assert prediction_rows(app_settings)[(1, CONFIG_B.digest)].is_current is False
    [letter] = rows(app_settings, db.dead_letters)
    assert letter.resolved_at is None
    assert [r.status for r in rows(app_settings, db.prediction_requests)] == [R.DONE]


@pytest.mark.parametrize("status", ["discarded", "promoted"])
def test_a_closed_rollouts_batch_is_done_with_nothing_written(
    app_settings: Settings, status: str
) -> None:
    engine = engine_of(app_settings)
    candidate = rollout(engine, status)
    key, requests = started(engine, [1, 2])

    outcome = ledger.settle_batch(
        engine,
        settlement(
            key,
            requests,
            configuration=CONFIG_B,
            answers={1: answer(1)},
            refused={2: "too long"},
            text_digests={1: "d"},
            rollout=candidate,
        ),
    )

    assert outcome == (0, 0)
    assert rows(app_settings, db.predictions) == []
    assert rows(app_settings, db.dead_letters) == []
    assert [r.status for r in rows(app_settings, db.prediction_requests)] == [R.DONE, R.DONE]
    assert batch_row(app_settings, key).status == B.SUCCEEDED
