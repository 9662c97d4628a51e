"""Records a rollout could not predict, on SQLite and PostgreSQL: charged to the rollout,
counted in its report by kind, replayed into it, resolved only by a candidate prediction.

Six records with current predictions; the scripted model refuses one text (as the server's
``instance_errors`` do) and one record is deleted before the rollout's run (missing from the
feature store). The refused record is refused in an ordinary batch too, so the data tells an
ordinary dead letter from the rollout's: the report counts the rollout's only, an ordinary
prediction resolves the ordinary one only, and a replay publishes the ordinary one and puts
the rollout's back into the rollout. Domain level (``Predictor`` with the real local feature
store and the scripted client behind the model client interface).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from batchinfer_dagster import db, ledger, rollout
from batchinfer_dagster.clients.feature_store import LocalFeatureStore
from batchinfer_dagster.defs.rollout_defs import report_metadata
from batchinfer_dagster.prediction import Predictor, configuration_of
from batchinfer_dagster.receipts import UNKNOWN, ModelIdentity, text_digest
from batchinfer_dagster.records import add_records, delete_record
from batchinfer_dagster.settings import Settings
from batchinfer_protocol.zero_shot import Prediction, PredictParameters
from batchinfer_testing.deployment import engine_of, rows
from batchinfer_testing.fakes.model_client import ScriptedModelClient
from batchinfer_testing.lock_waits import impatient_engine

NOW = datetime(2026, 12, 5, 9, 0, tzinfo=UTC)
SCRIPTED = ModelIdentity("scripted", UNKNOWN)
CURRENT = PredictParameters()
CANDIDATE = PredictParameters(hypothesis_template="About {}.")
TEXTS = [f"support ticket number {i}" for i in range(6)]


class Published:
    """A queue's ``publish`` that keeps the payloads."""

    def __init__(self) -> None:
        self.payloads: list[bytes] = []

    def __call__(self, payloads: list[bytes]) -> list[str]:
        start = len(self.payloads)
        self.payloads += payloads
        return [f"m{start + i}" for i in range(len(payloads))]


def predictor(engine: sa.Engine, client: ScriptedModelClient) -> Predictor:
    return Predictor(
        engine=engine,
        feature_store=LocalFeatureStore(engine),
        model=client,
        parameters=CURRENT,
        feature_wait=timedelta(minutes=10),
        clock=lambda: NOW,
    )


def ordinary_batch(engine: sa.Engine, record_ids: list[int]) -> str:
    with engine.begin() as connection:
        (key,) = ledger.write_batches(connection, record_ids, source="test", batch_size=10, now=NOW)
    return key


def open_letters(settings: Settings) -> list[tuple[int, str, str]]:
    """Open dead letters as (record, source, rollout or "none"), sorted."""
    table = db.dead_letters
    return sorted(
        (r.record_id, r.source, r.rollout or "none")
        for r in rows(settings, table, table.c.resolved_at.is_(None))
    )


def test_refused_and_missing_records_are_the_rollouts_and_replay_into_it(
    app_settings: Settings,
) -> None:
    engine = engine_of(app_settings)
    ids = add_records(engine, TEXTS)
    LocalFeatureStore(engine).import_records()
    current = configuration_of(CURRENT, SCRIPTED)
    candidate = configuration_of(CANDIDATE, SCRIPTED)
    with engine.begin() as connection:
        ledger.write_predictions(
            connection,
            {i: Prediction(t, ["billing", "mobile"], [0.7, 0.3]) for i, t in zip(ids, TEXTS)},
            configuration=current,
            text_digests={i: text_digest(t) for i, t in zip(ids, TEXTS)},
            batch_key="b",
            run_id="r",
            now=NOW,
        )
    client = ScriptedModelClient(chunk_size=64, max_request_bytes=1 << 20)
    refused, deleted = ids[1], ids[2]
    client.refuse[TEXTS[1]] = "scripted: this text is refused"

    # An ordinary batch refuses the record first: an ordinary dead letter.
    outcome = predictor(engine, client).predict(ordinary_batch(engine, [refused]), "run-0")
    assert outcome.refused == 1

    started = rollout.start(engine, candidate, ids, batch_size=10, now=NOW)
    (rollout_batch,) = started.batch_keys
    delete_record(engine, deleted)
    outcome = predictor(engine, client).predict(rollout_batch, "run-1")
    assert (outcome.refused, outcome.dead_lettered) == (1, 2)
    stored = rows(app_settings, db.predictions, db.predictions.c.configuration == candidate.digest)
    assert sorted(r.record_id for r in stored) == sorted(set(ids) - {refused, deleted})
    # The run measured its model call on the batch (the report's texts/s): five texts answered,
    # the deleted record's included (its features were fetched before the deletion).
    (measured,) = rows(
        app_settings, db.prediction_batches, db.prediction_batches.c.batch_key == rollout_batch
    )
    assert measured.predicted == 5
    assert measured.model_seconds == outcome.model_seconds

    assert open_letters(app_settings) == sorted(
        [
            (refused, "model", "none"),
            (refused, "model", candidate.digest),
            (deleted, "ledger", candidate.digest),
        ]
    )
    report = rollout.report(engine, candidate.digest)
    assert report.compared == 4  # the deleted record lost its current row as well
    assert report.dead_letters == {"refused": 1, "missing": 1, "failed": 0}
    shown = report_metadata(report, rollout.progress(engine, candidate.digest))
    assert (shown["records_refused"], shown["records_missing"]) == (1, 1)

    # The record's current prediction resolves the ordinary dead letter, not the rollout's.
    client.refuse.clear()
    predictor(engine, client).predict(ordinary_batch(engine, [refused]), "run-2")
    assert open_letters(app_settings) == [
        (refused, "model", candidate.digest),
        (deleted, "ledger", candidate.digest),
    ]
    assert rollout.report(engine, candidate.digest).dead_letters["refused"] == 1

    # Replay: both go back into the running rollout (a new batch of it), nothing is published.
    publish = Published()
    replayed = ledger.replay_dead_letters(
        engine, publish, ledger.DeadLetterFilter(), now=NOW, rollout_batch_size=10
    )
    assert (replayed.replayed, replayed.into_rollouts, replayed.rollout_closed) == (2, 2, 0)
    assert publish.payloads == []
    batch_keys = {r.batch_key for r in rows(app_settings, db.rollout_batches)}
    (again,) = batch_keys - {rollout_batch}
    assert rollout.progress(engine, candidate.digest).open == 2
    replays = {r.record_id: r.replay_message_id for r in rows(app_settings, db.dead_letters)}
    requests = {r.message_id: r for r in rows(app_settings, db.prediction_requests)}
    assert requests[replays[refused]].batch_key == again

    outcome = predictor(engine, client).predict(again, "run-3")
    assert (outcome.refused, outcome.dead_lettered) == (0, 1)
    report = rollout.report(engine, candidate.digest)
    assert report.compared == 5
    # The deleted record is missing again: one record, counted once.
    assert report.dead_letters == {"refused": 0, "missing": 1, "failed": 0}
    assert rollout.progress(engine, candidate.digest).open == 0

    # Promoted, the candidate is current: the rollout's open dead letter became an ordinary
    # one in the promote's transaction, so a replay publishes it as a normal request.
    assert rollout.promote(engine, candidate.digest, now=NOW) == 5
    # Two: the first, replayed into the rollout, and the one its replay left.
    assert open_letters(app_settings) == [(deleted, "ledger", "none")] * 2
    assert rollout.report(engine, candidate.digest).dead_letters["missing"] == 0
    closed = ledger.replay_dead_letters(engine, publish, ledger.DeadLetterFilter(), now=NOW)
    assert (closed.replayed, closed.into_rollouts, closed.rollout_closed) == (1, 0, 0)
    assert publish.payloads == [ledger.request_payload(deleted)]
    currents = rows(app_settings, db.predictions, db.predictions.c.is_current)
    assert {r.configuration for r in currents} == {candidate.digest}
    assert sorted(r.record_id for r in currents) == sorted(set(ids) - {deleted})


def test_an_ordinary_dead_letter_is_published_and_not_counted_by_a_rollout(
    app_settings: Settings,
) -> None:
    """The branch the first test never takes: an ordinary dead letter with a rollout running."""
    engine = engine_of(app_settings)
    ids = add_records(engine, TEXTS[:2])
    LocalFeatureStore(engine).import_records()
    candidate = configuration_of(CANDIDATE, SCRIPTED)
    client = ScriptedModelClient(chunk_size=64, max_request_bytes=1 << 20)
    predictor(engine, client).predict(ordinary_batch(engine, ids), "run-0")
    rollout.start(engine, candidate, ids, batch_size=10, now=NOW)
    client.refuse[TEXTS[0]] = "scripted: refused"
    predictor(engine, client).predict(ordinary_batch(engine, [ids[0]]), "run-1")

    assert rollout.report(engine, candidate.digest).dead_letters == {
        "refused": 0,
        "missing": 0,
        "failed": 0,
    }
    publish = Published()
    replayed = ledger.replay_dead_letters(engine, publish, ledger.DeadLetterFilter(), now=NOW)
    assert (replayed.replayed, replayed.into_rollouts) == (1, 0)
    assert publish.payloads == [ledger.request_payload(ids[0])]


def test_migration_0009_charges_existing_dead_letters_to_their_rollout(
    app_settings: Settings,
) -> None:
    """Dead letters written before 0009: a rollout request's gets its candidate, others none."""
    from alembic import command

    engine = engine_of(app_settings)
    config = db._alembic_config()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, "0008")
        requests = sa.table(
            "prediction_requests",
            *(sa.column(c) for c in ("message_id", "record_id", "batch_key", "status")),
            *(sa.column(c) for c in ("attempts", "received_at", "updated_at")),
        )
        connection.execute(
            requests.insert(),
            [
                {"message_id": key, "record_id": 1, "batch_key": batch, "status": "dead_lettered"}
                | {"attempts": 0, "received_at": NOW, "updated_at": NOW}
                for key, batch in [("rollout:1", "rb"), ("test:1", "ob")]
            ],
        )
        connection.execute(
            sa.table("rollout_batches", sa.column("batch_key"), sa.column("candidate")).insert(),
            [{"batch_key": "rb", "candidate": "c" * 64}],
        )
        letters = sa.table(
            "dead_letters",
            *(sa.column(c) for c in ("source", "message_id", "payload", "reason")),
            *(sa.column(c) for c in ("received_at", "record_id")),
        )
        connection.execute(
            letters.insert(),
            [
                {"source": "model", "message_id": key, "payload": "{}", "reason": "r"}
                | {"received_at": NOW, "record_id": 1}
                for key in ("rollout:1", "test:1", None)
            ],
        )

    db.upgrade(engine)

    table = db.dead_letters
    found = [(r.message_id, r.rollout) for r in rows(app_settings, table)]
    assert sorted(found, key=str) == sorted(
        [("rollout:1", "c" * 64), ("test:1", None), (None, None)], key=str
    )


def test_discard_resolves_the_rollouts_dead_letters_and_no_others(app_settings: Settings) -> None:
    """A discarded rollout's refused record is settled (nothing will ask for it again), while
    the same record's ordinary dead letter stays open; starting again requests it anew."""
    engine = engine_of(app_settings)
    ids = add_records(engine, TEXTS[:2])
    LocalFeatureStore(engine).import_records()
    candidate = configuration_of(CANDIDATE, SCRIPTED)
    client = ScriptedModelClient(chunk_size=64, max_request_bytes=1 << 20)
    client.refuse[TEXTS[0]] = "scripted: refused"
    predictor(engine, client).predict(ordinary_batch(engine, ids), "run-0")
    (key,) = rollout.start(engine, candidate, ids, batch_size=10, now=NOW).batch_keys
    predictor(engine, client).predict(key, "run-1")
    assert len(open_letters(app_settings)) == 2

    rollout.discard(engine, candidate.digest, now=NOW)

    assert open_letters(app_settings) == [(ids[0], "model", "none")]
    table = db.dead_letters
    (settled,) = rows(app_settings, table, table.c.rollout == candidate.digest)
    assert (settled.resolved_at, settled.resolved_by_run) == (NOW, rollout.DISCARDED_BY)
    again = rollout.start(engine, candidate, ids, batch_size=10, now=NOW)
    assert (again.requested, again.skipped) == (2, 0)  # its one candidate row was deleted


def a_rollout_with_an_open_dead_letter(
    settings: Settings,
) -> tuple[sa.Engine, list[int], str]:
    """Two records with current predictions and a running rollout whose model refused the
    first: (engine, record ids, candidate digest), one open dead letter of the rollout."""
    engine = engine_of(settings)
    ids = add_records(engine, TEXTS[:2])
    LocalFeatureStore(engine).import_records()
    candidate = configuration_of(CANDIDATE, SCRIPTED)
    client = ScriptedModelClient(chunk_size=64, max_request_bytes=1 << 20)
    predictor(engine, client).predict(ordinary_batch(engine, ids), "run-0")
    (key,) = rollout.start(engine, candidate, ids, batch_size=10, now=NOW).batch_keys
    client.refuse[TEXTS[0]] = "scripted: refused"
    predictor(engine, client).predict(key, "run-1")
    assert open_letters(settings) == [(ids[0], "model", candidate.digest)]
    return engine, ids, candidate.digest


@contextmanager
def at_statement(
    engine: sa.Engine, which: Callable[[str], bool], interleave: Callable[[], None]
) -> Iterator[list[str]]:
    """Run ``interleave`` once, in this thread, just before ``engine`` first executes a
    statement for which ``which`` (of its upper-case text) holds; yields a list that holds that
    statement once it ran."""
    seen: list[str] = []

    def hold(connection: sa.Connection, cursor: Any, statement: str, *args: Any) -> None:
        if not seen and which(" ".join(statement.upper().split())):
            seen.append(statement)
            interleave()

    sa.event.listen(engine, "before_cursor_execute", hold)
    try:
        yield seen
    finally:
        sa.event.remove(engine, "before_cursor_execute", hold)


def locking_the_rollout(statement: str) -> bool:
    """The first statement of a replay's request in a rollout (and of promote and discard):
    the rollout's row held (``ledger.runs.locked_rollout_status``)."""
    return statement.startswith("UPDATE ROLLOUTS SET STATUS=ROLLOUTS.STATUS")


def marking_it_promoted(statement: str) -> bool:
    """Promote's change of the status, after it counted the open requests."""
    return statement.startswith("UPDATE ROLLOUTS SET STATUS=") and "UPDATED_AT" in statement


def test_a_promote_between_a_replays_claim_and_its_request_makes_the_letter_ordinary(
    app_settings: Settings,
) -> None:
    """The replay has claimed the rollout's dead letter when the promote commits (it counted no
    open request: the letter was not requested yet). The replay then finds the rollout promoted,
    releases its claim, and publishes the letter as the ordinary one it now is."""
    engine, ids, digest = a_rollout_with_an_open_dead_letter(app_settings)
    promoted: list[int] = []
    publish = Published()

    def promote() -> None:
        promoted.append(rollout.promote(engine, digest, now=NOW))

    with at_statement(engine, locking_the_rollout, promote) as seen:
        replayed = ledger.replay_dead_letters(engine, publish, ledger.DeadLetterFilter(), now=NOW)
    assert seen
    assert promoted == [1]
    assert (replayed.replayed, replayed.into_rollouts, replayed.rollout_closed) == (1, 0, 0)
    assert publish.payloads == [ledger.request_payload(ids[0])]
    assert rollout.progress(engine, digest).open == 0
    (letter,) = rows(app_settings, db.dead_letters)
    assert (letter.rollout, letter.replay_message_id) == (None, "m0")


def test_a_discard_between_a_replays_claim_and_its_request_resolves_the_letter(
    app_settings: Settings,
) -> None:
    engine, _, digest = a_rollout_with_an_open_dead_letter(app_settings)
    publish = Published()
    with at_statement(
        engine, locking_the_rollout, lambda: rollout.discard(engine, digest, now=NOW)
    ) as seen:
        replayed = ledger.replay_dead_letters(engine, publish, ledger.DeadLetterFilter(), now=NOW)
    assert seen
    assert (replayed.replayed, replayed.rollout_closed) == (0, 0)
    assert publish.payloads == []
    assert rollout.progress(engine, digest).requested == 2  # no batch added
    (letter,) = rows(app_settings, db.dead_letters)
    assert (letter.resolved_by_run, letter.replayed_at) == (rollout.DISCARDED_BY, None)


def test_a_replay_into_the_rollout_cannot_slip_in_under_a_promote(
    app_settings: Settings,
) -> None:
    """The promote has counted no open request of the rollout and is about to mark it promoted
    when a replay tries to request the rollout's dead letter in it. The rollout's row is held
    (SQLite: the write lock, taken before the count), so the replay fails on the lock instead
    of adding a batch the promote never counted; its claim is released, and once promoted the
    letter is published as an ordinary one."""
    engine, ids, digest = a_rollout_with_an_open_dead_letter(app_settings)
    impatient = impatient_engine(app_settings.resolved_database_url)
    failures: list[Exception] = []

    def replay_now() -> None:
        try:
            ledger.replay_dead_letters(impatient, Published(), ledger.DeadLetterFilter(), now=NOW)
        except sa.exc.OperationalError as error:
            failures.append(error)

    try:
        with at_statement(engine, marking_it_promoted, replay_now) as seen:
            assert rollout.promote(engine, digest, now=NOW) == 1
    finally:
        impatient.dispose()
    assert seen
    progress = rollout.progress(engine, digest)
    assert (str(progress.status), progress.open, progress.requested) == ("promoted", 0, 2)
    assert len(failures) == 1
    publish = Published()
    replayed = ledger.replay_dead_letters(engine, publish, ledger.DeadLetterFilter(), now=NOW)
    assert (replayed.replayed, replayed.into_rollouts) == (1, 0)
    assert publish.payloads == [ledger.request_payload(ids[0])]


def test_a_discarded_rollouts_batch_out_of_attempts_leaves_no_open_dead_letter(
    app_settings: Settings,
) -> None:
    """Reconcile gives up on a rollout's batch after its discard: its requests become dead
    letters written resolved (``DISCARDED_BY``), charged to the rollout but open to nobody."""
    engine = engine_of(app_settings)
    ids = add_records(engine, TEXTS[:2])
    candidate = configuration_of(CANDIDATE, SCRIPTED)
    (key,) = rollout.start(engine, candidate, ids, batch_size=10, now=NOW).batch_keys
    rollout.discard(engine, candidate.digest, now=NOW)

    assert ledger.dead_letter_batch(engine, key, reason="out of attempts", now=NOW) == 2

    assert open_letters(app_settings) == []
    letters = rows(app_settings, db.dead_letters)
    assert sorted(r.record_id for r in letters) == ids
    assert {(r.rollout, r.resolved_by_run) for r in letters} == {
        (candidate.digest, rollout.DISCARDED_BY)
    }


def test_a_discard_cannot_slip_between_a_give_up_and_its_dead_letters(
    app_settings: Settings,
) -> None:
    """The rollout's row is held from the moment a batch given up on reads the rollout's
    status: a discard tried just before the dead letters are written cannot commit (it fails
    at once on an impatient engine), so no dead letter is left open, charged to a rollout
    discarded under it; the discard then settles them."""
    engine = engine_of(app_settings)
    ids = add_records(engine, TEXTS[:2])
    candidate = configuration_of(CANDIDATE, SCRIPTED)
    (key,) = rollout.start(engine, candidate, ids, batch_size=10, now=NOW).batch_keys
    impatient = impatient_engine(app_settings.resolved_database_url)
    tried: list[object] = []

    def discard_now() -> None:
        try:
            tried.append(rollout.discard(impatient, candidate.digest, now=NOW))
        except sa.exc.OperationalError as error:
            tried.append(error)

    try:
        with at_statement(
            engine, lambda statement: statement.startswith("INSERT INTO DEAD_LETTERS"), discard_now
        ) as seen:
            ledger.dead_letter_batch(engine, key, reason="out of attempts", now=NOW)
    finally:
        impatient.dispose()
    assert seen
    assert len(tried) == 1
    assert rollout.progress(engine, candidate.digest).status == "running"
    assert open_letters(app_settings) == [(i, "ledger", candidate.digest) for i in ids]
    assert isinstance(tried[0], sa.exc.OperationalError)  # the discard had to wait
    rollout.discard(engine, candidate.digest, now=NOW)
    assert open_letters(app_settings) == []


def test_a_running_rollouts_batch_out_of_attempts_is_charged_to_it(
    app_settings: Settings,
) -> None:
    """The other side of the rule above: while the rollout runs, the dead letters are open and
    its report counts them as failed."""
    engine = engine_of(app_settings)
    ids = add_records(engine, TEXTS[:2])
    candidate = configuration_of(CANDIDATE, SCRIPTED)
    (key,) = rollout.start(engine, candidate, ids, batch_size=10, now=NOW).batch_keys

    assert ledger.dead_letter_batch(engine, key, reason="out of attempts", now=NOW) == 2

    assert open_letters(app_settings) == [(i, "ledger", candidate.digest) for i in ids]
    assert rollout.report(engine, candidate.digest).dead_letters["failed"] == 2


@pytest.mark.parametrize("status", ["promoted", "discarded", "running"])
def test_migration_0010_settles_the_dead_letters_of_closed_rollouts(
    app_settings: Settings, status: str
) -> None:
    """Open dead letters of a rollout closed before 0010: a promoted rollout's become ordinary,
    a discarded one's resolved; a running rollout's, and resolved ones, stay as they were."""
    from alembic import command

    engine = engine_of(app_settings)
    config = db._alembic_config()
    digest = "c" * 64
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, "0009")
        connection.execute(
            db.rollouts.insert().values(
                candidate=digest, status=status, created_at=NOW, updated_at=NOW
            )
        )
        letters = sa.table(
            "dead_letters",
            *(sa.column(c) for c in ("source", "payload", "reason", "received_at")),
            *(sa.column(c) for c in ("record_id", "rollout", "resolved_at", "resolved_by_run")),
        )
        connection.execute(
            letters.insert(),
            [
                {"source": "model", "payload": "{}", "reason": "r", "received_at": NOW}
                | {"record_id": record_id, "rollout": digest}
                | {"resolved_at": resolved, "resolved_by_run": "run-1" if resolved else None}
                for record_id, resolved in [(1, None), (2, NOW)]
            ],
        )

    db.upgrade(engine)

    found = {r.record_id: r for r in rows(app_settings, db.dead_letters)}
    assert (found[2].rollout, found[2].resolved_by_run) == (digest, "run-1")
    open_one = found[1]
    expected = {
        "promoted": (None, None),
        "discarded": (digest, rollout.DISCARDED_BY),
        "running": (digest, None),
    }[status]
    assert (open_one.rollout, open_one.resolved_by_run) == expected
    assert (open_one.resolved_at is None) == (status != "discarded")
