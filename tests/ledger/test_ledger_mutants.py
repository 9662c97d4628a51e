"""Ledger rules that mutmut's survivors showed no test could tell apart (``make mutate``).

Each test uses data that separates the rule from its mutant: a second batch beside the one
acted on, unequal times and attempts, a row in another state, more rows than the limit, a filter
that excludes something. docs/reliability.md lists the mutants each one kills.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import sqlalchemy as sa

from batchinfer_dagster import db, ledger
from batchinfer_dagster.clients.queue import ReceivedMessage
from batchinfer_dagster.ledger.dead_letters import MAX_ERROR_CHARS
from batchinfer_dagster.settings import Settings
from batchinfer_testing.deployment import engine_of, rows

NOW = datetime(2026, 12, 5, 9, 0, tzinfo=UTC)
R = ledger.RequestStatus
B = ledger.BatchStatus


def set_requests(engine: sa.Engine, record_id: int, **values: object) -> None:
    table = db.prediction_requests
    with engine.begin() as connection:
        connection.execute(table.update().where(table.c.record_id == record_id).values(**values))


def set_batch(engine: sa.Engine, batch_key: str, **values: object) -> None:
    table = db.prediction_batches
    with engine.begin() as connection:
        connection.execute(table.update().where(table.c.batch_key == batch_key).values(**values))


def request_of(settings: Settings, record_id: int) -> sa.Row:
    [row] = rows(settings, db.prediction_requests, db.prediction_requests.c.record_id == record_id)
    return row


def batch_of(settings: Settings, batch_key: str) -> sa.Row:
    [row] = rows(settings, db.prediction_batches, db.prediction_batches.c.batch_key == batch_key)
    return row


def test_dead_letter_batch_takes_only_its_own_queued_requests(app_settings: Settings) -> None:
    """A done request of the batch and a queued request of another batch stay as they are."""
    engine = engine_of(app_settings)
    (key,) = ledger.create_batches(engine, [1, 2, 3], source="t", batch_size=8, now=NOW)
    (other,) = ledger.create_batches(engine, [4], source="t", batch_size=8, now=NOW)
    set_requests(engine, 3, status=R.DONE)
    later = NOW + timedelta(minutes=1)

    assert ledger.dead_letter_batch(engine, key, reason="out of attempts", now=later) == 2

    statuses = {r: request_of(app_settings, r).status for r in (1, 2, 3, 4)}
    assert statuses == {1: R.DEAD_LETTERED, 2: R.DEAD_LETTERED, 3: R.DONE, 4: R.QUEUED}
    letters = rows(app_settings, db.dead_letters)
    assert sorted((r.record_id, r.reason) for r in letters) == [
        (1, "out of attempts"),
        (2, "out of attempts"),
    ]
    assert (batch_of(app_settings, key).status, batch_of(app_settings, key).updated_at) == (
        B.DEAD_LETTERED,
        later,
    )
    assert batch_of(app_settings, other).status == B.QUEUED


def test_last_error_is_the_batchs_own_error(app_settings: Settings) -> None:
    """Errors sit on another batch's request and beside a request without one."""
    engine = engine_of(app_settings)
    (key,) = ledger.create_batches(engine, [1, 2], source="t", batch_size=8, now=NOW)
    (other,) = ledger.create_batches(engine, [3], source="t", batch_size=8, now=NOW)
    (clean,) = ledger.create_batches(engine, [4], source="t", batch_size=8, now=NOW)
    set_requests(engine, 2, error="model server down")
    set_requests(engine, 3, error="another batch's error")

    assert ledger.last_error(engine, key) == "model server down"
    assert ledger.last_error(engine, other) == "another batch's error"
    assert ledger.last_error(engine, clean) is None


def test_count_attempt_requeues_a_failed_batch_and_leaves_others(app_settings: Settings) -> None:
    engine = engine_of(app_settings)
    (failed,) = ledger.create_batches(engine, [1], source="t", batch_size=8, now=NOW)
    (bystander,) = ledger.create_batches(engine, [2], source="t", batch_size=8, now=NOW)
    set_batch(engine, failed, status=B.FAILED, attempts=2)
    set_batch(engine, bystander, status=B.FAILED, attempts=2)
    later = NOW + timedelta(minutes=5)

    assert ledger.count_attempt(engine, [failed], now=later) == {failed: 3}

    row = batch_of(app_settings, failed)
    assert (row.status, row.attempts, row.updated_at) == (B.QUEUED, 3, later)
    untouched = batch_of(app_settings, bystander)
    assert (untouched.status, untouched.attempts, untouched.updated_at) == (B.FAILED, 2, NOW)


def test_count_attempt_refuses_a_transition_outside_the_state_machine(
    app_settings: Settings,
) -> None:
    """A succeeded batch may not go back to queued: no new attempt is counted."""
    engine = engine_of(app_settings)
    (done,) = ledger.create_batches(engine, [1], source="t", batch_size=8, now=NOW)
    set_batch(engine, done, status=B.SUCCEEDED, attempts=1)

    assert ledger.count_attempt(engine, [done], now=NOW + timedelta(minutes=5)) == {done: 1}
    assert batch_of(app_settings, done).status == B.SUCCEEDED


def test_touch_batches_moves_only_the_named_batches_on(app_settings: Settings) -> None:
    engine = engine_of(app_settings)
    keys = ledger.create_batches(engine, [1, 2, 3], source="t", batch_size=1, now=NOW)
    later = NOW + timedelta(minutes=3)

    ledger.touch_batches(engine, keys[:2], now=later)

    assert [batch_of(app_settings, k).updated_at for k in keys] == [later, later, NOW]


class Recorder:
    """A queue's ``publish`` that numbers the messages it is given."""

    def __init__(self) -> None:
        self.published: list[bytes] = []
        self.calls: list[int] = []

    def __call__(self, payloads: list[bytes]) -> list[str]:
        self.calls.append(len(payloads))
        start = len(self.published)
        self.published += payloads
        return [f"m{start + i}" for i in range(len(payloads))]


def dead_letter(engine: sa.Engine, record_id: int | None, reason: str, **values: object) -> int:
    payload = "not json" if record_id is None else f'{{"id": {record_id}}}'
    row = {"source": "ledger", "payload": payload, "reason": reason, "received_at": NOW}
    with engine.begin() as connection:
        return connection.execute(
            db.dead_letters.insert().values(**row, record_id=record_id, **values)
        ).inserted_primary_key[0]


def test_replay_by_reason_takes_only_matching_letters_and_escapes_wildcards(
    app_settings: Settings,
) -> None:
    """``%`` in the filter is a percent sign, not a wildcard (``autoescape``)."""
    engine = engine_of(app_settings)
    dead_letter(engine, 1, "refused: 100% of the budget")
    dead_letter(engine, 2, "refused: 100 tokens of the budget")
    dead_letter(engine, 3, "unknown record id")
    publish = Recorder()

    report = ledger.replay_dead_letters(
        engine, publish, ledger.DeadLetterFilter(reason="100%"), now=NOW
    )

    assert publish.published == [ledger.request_payload(1)]
    assert (report.replayed, report.not_replayable, report.already_replayed) == (1, 0, 0)


def test_replay_by_ids_counts_only_the_named_letters(app_settings: Settings) -> None:
    """Letters outside the ids (a malformed one, one replayed before) are not counted."""
    engine = engine_of(app_settings)
    first = dead_letter(engine, 1, "x")
    second = dead_letter(engine, 2, "x")
    dead_letter(engine, None, "malformed")
    dead_letter(engine, 3, "x", replayed_at=NOW, replay_message_id="old")
    publish = Recorder()

    report = ledger.replay_dead_letters(
        engine, publish, ledger.DeadLetterFilter(ids=[second]), now=NOW
    )

    assert publish.published == [ledger.request_payload(2)]
    assert (report.replayed, report.not_replayable, report.already_replayed) == (1, 0, 0)
    replayed = {r.id: r.replay_message_id for r in rows(app_settings, db.dead_letters)}
    assert (replayed[first], replayed[second]) == (None, "m0")


def test_replay_in_small_chunks_pairs_each_letter_with_its_message(
    app_settings: Settings,
) -> None:
    """Five letters in chunks of two: three publishes, ids matched in order, counted once."""
    engine = engine_of(app_settings)
    ids = [dead_letter(engine, record_id, "x") for record_id in (15, 11, 14, 12, 13)]
    dead_letter(engine, 9, "x", replayed_at=NOW, replay_message_id="old")
    publish = Recorder()

    report = ledger.replay_dead_letters(
        engine, publish, ledger.DeadLetterFilter(), now=NOW, chunk=2
    )

    assert publish.published == [ledger.request_payload(r) for r in (15, 11, 14, 12, 13)]
    assert (report.replayed, report.already_replayed) == (5, 1)
    assert publish.calls == [2, 2, 1]
    by_id = {r.id: r.replay_message_id for r in rows(app_settings, db.dead_letters)}
    assert [by_id[i] for i in ids] == ["m0", "m1", "m2", "m3", "m4"]

    again = ledger.replay_dead_letters(engine, publish, ledger.DeadLetterFilter(), now=NOW)
    assert (again.replayed, again.already_replayed) == (0, 6)
    assert len(publish.published) == 5


def test_replay_skips_resolved_letters(app_settings: Settings) -> None:
    """A dead letter resolved by a later prediction is not asked for again (a second pass)."""
    engine = engine_of(app_settings)
    dead_letter(engine, 1, "x", resolved_at=NOW, resolved_by_run="run-1")
    dead_letter(engine, 2, "x")
    publish = Recorder()

    report = ledger.replay_dead_letters(engine, publish, ledger.DeadLetterFilter(), now=NOW)

    assert (publish.published, report.replayed) == ([ledger.request_payload(2)], 1)


def test_a_failed_lookup_postpones_each_request_by_its_own_backoff(
    app_settings: Settings,
) -> None:
    """Unequal attempts (1 and 3) give unequal backoffs; the long error is cut to its limit."""
    engine = engine_of(app_settings)
    ledger.create_batches(engine, [1, 2], source="t", batch_size=8, now=NOW)
    set_requests(engine, 1, status=R.WAITING_FEATURES, attempts=1, not_before=NOW)
    set_requests(engine, 2, status=R.WAITING_FEATURES, attempts=3, not_before=NOW)
    later = NOW + timedelta(seconds=30)

    def lookup(record_ids: object) -> set[int]:
        raise ConnectionError("x" * (2 * MAX_ERROR_CHARS))

    outcome = ledger.recheck_waiting(
        engine,
        lookup,
        now=later,
        feature_wait=timedelta(hours=1),
        batch_size=8,
        limit=10,
    )

    assert (outcome.still_waiting, outcome.dead_lettered, outcome.batch_keys) == (2, 0, [])
    assert outcome.lookup_error is not None
    assert outcome.lookup_error.startswith("looking up 2 waiting requests in the feature store")
    for record_id, attempts in ((1, 1), (2, 3)):
        row = request_of(app_settings, record_id)
        assert row.status == R.WAITING_FEATURES
        assert row.attempts == attempts + 1
        assert row.not_before == later + ledger.feature_backoff(attempts)
        assert row.updated_at == later
        assert len(row.error) == MAX_ERROR_CHARS
    assert rows(app_settings, db.dead_letters) == []


def test_recheck_takes_the_earliest_due_first_and_splits_by_batch_size(
    app_settings: Settings,
) -> None:
    """Four due requests, limit 3, batch size 2: the three earliest, in two new batches."""
    engine = engine_of(app_settings)
    ledger.create_batches(engine, [1, 2, 3, 4], source="t", batch_size=8, now=NOW)
    for record_id, seconds in ((1, 40), (2, 10), (3, 30), (4, 20)):
        set_requests(
            engine,
            record_id,
            status=R.WAITING_FEATURES,
            not_before=NOW + timedelta(seconds=seconds),
        )

    outcome = ledger.recheck_waiting(
        engine,
        lambda ids: set(ids),
        now=NOW + timedelta(minutes=1),
        feature_wait=timedelta(hours=1),
        batch_size=2,
        limit=3,
    )

    assert len(outcome.batch_keys) == 2
    assert {r: request_of(app_settings, r).status for r in (1, 2, 3, 4)} == {
        1: R.WAITING_FEATURES,
        2: R.QUEUED,
        3: R.QUEUED,
        4: R.QUEUED,
    }
    sizes = sorted(
        len(rows(app_settings, db.prediction_requests, db.prediction_requests.c.batch_key == k))
        for k in outcome.batch_keys
    )
    assert sizes == [1, 2]


def test_waiting_requests_nearest_their_deadline_first(app_settings: Settings) -> None:
    """Unequal receipt times, a tie broken by message id, a queued request not shown."""
    engine = engine_of(app_settings)
    ledger.create_batches(engine, [1, 2, 3, 4], source="t", batch_size=8, now=NOW)
    received = {1: 30, 2: 10, 3: 10, 4: 0}
    for record_id, seconds in received.items():
        set_requests(
            engine,
            record_id,
            status=R.WAITING_FEATURES if record_id != 4 else R.QUEUED,
            received_at=NOW + timedelta(seconds=seconds),
            not_before=NOW + timedelta(seconds=seconds + 5) if record_id != 3 else None,
        )
    wait = timedelta(minutes=10)

    shown, total = ledger.waiting_requests(engine, feature_wait=wait, limit=2)

    assert total == 3
    ids = {r: request_of(app_settings, r).message_id for r in (2, 3)}
    assert [w.record_id for w in shown] == sorted((2, 3), key=lambda r: ids[r])
    by_record = {w.record_id: w for w in shown}
    two, three = by_record[2], by_record[3]
    assert two.document() == {
        "message_id": ids[2],
        "record_id": 2,
        "reason": ledger.WAITING_REASON,
        "received_at": (NOW + timedelta(seconds=10)).isoformat(),
        "next_lookup_at": (NOW + timedelta(seconds=15)).isoformat(),
        "dead_letter_at": (NOW + timedelta(seconds=10) + wait).isoformat(),
    }
    assert three.document()["next_lookup_at"] is None
    assert three.dead_letter_at == NOW + timedelta(seconds=10) + wait


def test_settled_and_old_settled_batches(app_settings: Settings) -> None:
    """Every batch state, unequal creation times, the ``before`` bound at the value and one past."""
    engine = engine_of(app_settings)
    keys = ledger.create_batches(engine, [1, 2, 3, 4, 5], source="t", batch_size=1, now=NOW)
    states = [B.SUCCEEDED, B.DEAD_LETTERED, B.FAILED, B.RUNNING, B.SUCCEEDED]
    for index, (key, state) in enumerate(zip(keys, states, strict=True)):
        set_batch(engine, key, status=state, created_at=NOW + timedelta(minutes=index))

    assert ledger.settled_batches(engine, list(reversed(keys))) == sorted(
        [keys[0], keys[1], keys[4]]
    )
    assert ledger.settled_batches(engine, keys[2:4]) == []
    # created at NOW + 0, 1 and 4 minutes; strictly before the bound.
    bound = NOW + timedelta(minutes=4)
    assert ledger.old_settled_batches(engine, before=bound, limit=10) == sorted(keys[:2])
    one_past = bound + timedelta(microseconds=1)
    assert ledger.old_settled_batches(engine, before=one_past, limit=10) == sorted(
        [keys[0], keys[1], keys[4]]
    )
    assert (
        ledger.old_settled_batches(engine, before=one_past, limit=2)
        == sorted([keys[0], keys[1], keys[4]])[:2]
    )


def test_prune_settled_keeps_waiting_requests_their_batches_and_unsettled_ones(
    app_settings: Settings,
) -> None:
    engine = engine_of(app_settings)
    (done, waiting, running) = ledger.create_batches(
        engine, [1, 2, 3, 4, 5], source="t", batch_size=2, now=NOW
    )
    set_batch(engine, done, status=B.SUCCEEDED)
    set_batch(engine, waiting, status=B.SUCCEEDED)
    set_batch(engine, running, status=B.RUNNING)
    set_requests(engine, 1, status=R.DONE)
    set_requests(engine, 2, status=R.DEAD_LETTERED)
    set_requests(engine, 3, status=R.DONE)
    set_requests(engine, 4, status=R.WAITING_FEATURES)
    set_requests(engine, 5, status=R.DONE)

    assert ledger.prune_settled(engine, [done, waiting, running]) == (3, 1)

    left = sorted(r.record_id for r in rows(app_settings, db.prediction_requests))
    assert left == [4, 5]
    batches = sorted(r.batch_key for r in rows(app_settings, db.prediction_batches))
    assert batches == sorted([waiting, running])


def test_resolving_twice_keeps_the_first_resolution(app_settings: Settings) -> None:
    """A second pass over state: a letter resolved by run-1 is not re-resolved by run-2."""
    engine = engine_of(app_settings)
    first = dead_letter(engine, 1, "x", resolved_at=NOW, resolved_by_run="run-1")
    dead_letter(engine, 1, "x")
    dead_letter(engine, 2, "x")
    untouched = dead_letter(engine, 3, "x")
    later = NOW + timedelta(hours=1)

    with engine.begin() as connection:
        resolved = ledger.resolve_dead_letters(connection, [2, 1, 2], run_id="run-2", now=later)

    assert resolved == 2
    by_id = {
        r.id: (r.record_id, r.resolved_by_run, r.resolved_at)
        for r in rows(app_settings, db.dead_letters)
    }
    assert by_id[first] == (1, "run-1", NOW)
    assert by_id[untouched] == (3, None, None)
    assert sorted(v for k, v in by_id.items() if k not in (first, untouched)) == [
        (1, "run-2", later),
        (2, "run-2", later),
    ]


def predicted(
    engine: sa.Engine,
    record_id: int,
    configuration: str,
    run_id: str,
    at: datetime,
    *,
    current: bool,
) -> None:
    row = {
        "record_id": record_id,
        "configuration": configuration,
        "model": "m",
        "sequence": "text",
        "labels": ["a"],
        "scores": [1.0],
        "run_id": run_id,
        "created_at": at,
        "updated_at": at,
        "is_current": current,
    }
    with engine.begin() as connection:
        connection.execute(db.predictions.insert().values(**row))


def test_queue_dead_letters_are_written_once_with_their_reason_and_resolution(
    app_settings: Settings,
) -> None:
    """Pub/Sub's read-back: attempts known and unknown, a malformed payload, a duplicate, a
    record predicted twice (the newest run resolves it), and a second read-back of the same."""
    engine = engine_of(app_settings)
    predicted(engine, 1, "c-new", "run-new", NOW + timedelta(minutes=2), current=True)
    predicted(engine, 1, "c-old", "run-old", NOW + timedelta(minutes=1), current=False)
    later = NOW + timedelta(minutes=5)
    known = ReceivedMessage("a", "ack-a", ledger.request_payload(1), 5, NOW)
    unknown_attempts = ReceivedMessage("b", "ack-b", ledger.request_payload(2), 0, NOW)
    malformed = ReceivedMessage("c", "ack-c", b"not json", 7, NOW)
    messages = [known, unknown_attempts, malformed, known]

    written = ledger.record_queue_dead_letters(engine, messages, queue="pubsub", now=later)

    assert written == 3
    letters = {r.record_id: r for r in rows(app_settings, db.dead_letters)}
    one, two, bad = letters[1], letters[2], letters[None]
    assert one.source == ledger.DeadLetterSource.PUBSUB_DEAD_LETTER
    assert one.message_id == ledger.request_key("pubsub-dead-letter", known)
    assert one.reason == (
        "Pub/Sub dead-lettered the message after 5 delivery attempts without an acknowledgement"
    )
    assert (one.delivery_attempts, one.received_at) == (5, later)
    assert (one.resolved_by_run, one.resolved_at) == ("run-new", later)
    assert one.payload == ledger.request_payload(1).decode()
    assert "after its maximum delivery attempts" in two.reason
    assert (two.delivery_attempts, two.resolved_by_run, two.resolved_at) == (None, None, None)
    assert (bad.payload, bad.delivery_attempts) == ("not json", 7)

    again = ledger.record_queue_dead_letters(engine, [known, malformed], queue="pubsub", now=later)
    assert again == 0
    assert len(rows(app_settings, db.dead_letters)) == 3


def test_local_queue_dead_letters_say_how_often_they_were_delivered(
    app_settings: Settings,
) -> None:
    engine = engine_of(app_settings)
    message = ReceivedMessage("a", "ack-a", ledger.request_payload(4), 3, NOW)

    assert ledger.record_queue_dead_letters(engine, [message], queue="local", now=NOW) == 1

    [letter] = rows(app_settings, db.dead_letters)
    assert (letter.source, letter.reason) == (
        ledger.DeadLetterSource.QUEUE,
        "not acknowledged after 3 deliveries",
    )
    assert letter.message_id == ledger.request_key("local-dead-letter", message)
