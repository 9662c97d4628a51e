"""A run's ledger batch: start it, settle it in one transaction, or record that it failed.

``prediction.Predictor`` calls these around the feature fetch and the model call; nothing here
calls the feature store or the model server, so a failed call leaves the ledger as it was.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy import Connection, Engine

from batchinfer_dagster import db
from batchinfer_dagster.chunks import chunked
from batchinfer_dagster.ledger.dead_letters import (
    MAX_ERROR_CHARS,
    UNKNOWN_RECORD,
    dead_letter_requests,
    resolve_dead_letters,
)
from batchinfer_dagster.ledger.rollout_lock import locked_rollout_status
from batchinfer_dagster.ledger.states import (
    BatchStatus,
    DeadLetterSource,
    RequestStatus,
    RolloutStatus,
    may_leave_for,
)
from batchinfer_dagster.receipts import Configuration
from batchinfer_protocol.zero_shot import Prediction

# ``rollouts.status`` of a rollout whose batches still write candidate predictions.
ROLLOUT_RUNNING = RolloutStatus.RUNNING
# The ``source`` of a rollout's requests in the ledger (their message ids start with it).
ROLLOUT_SOURCE = "rollout"

# A record missing from the feature store is looked up again after 5 s, 10 s, 20 s, ... 60 s.
FEATURE_BACKOFF_BASE = timedelta(seconds=5)
FEATURE_BACKOFF_MAX = timedelta(seconds=60)
# The most one observed gap adds to a request's feature wait: a look-up is due at most
# FEATURE_BACKOFF_MAX after the one before, and as much again covers a sensor tick delayed by
# load or a daemon restart. A longer gap is a clock stepped forward (or a daemon down for that
# long) and is credited this much: one step can end a wait at most this early.
FEATURE_WAIT_MAX_STEP = 2 * FEATURE_BACKOFF_MAX


class UnknownBatchError(LookupError):
    """A batch key that the ledger does not hold."""


@dataclass(frozen=True)
class BatchRequest:
    """One request of a batch, as a run reads it."""

    message_id: str
    record_id: int
    status: str
    attempts: int
    received_at: datetime
    # When the ledger last wrote the request, and the feature wait credited so far (seconds;
    # None until its record was first found missing): ``credited_wait``'s inputs.
    updated_at: datetime
    feature_waited_seconds: float | None = None


def credited_wait(request: BatchRequest, now: datetime) -> timedelta:
    """The part of the feature wait that ``request`` has served at ``now``.

    The wait is counted from receipt, but as a sum of the gaps the ledger observed (receipt to
    the first miss, then each look-up to the next), each credited between 0 and
    ``FEATURE_WAIT_MAX_STEP``: a clock stepped back adds nothing, one stepped forward by an hour
    adds at most the bound, where comparing ``now`` with ``received_at`` alone would have ended
    the wait at once. Time nobody observed (a backlog longer than the bound before the first
    run, a daemon that was down) is credited the bound too, so a request may wait longer than
    ``BATCHINFER_FEATURE_WAIT_SECONDS`` of wall time, never shorter by more than one bound.
    """
    seen = request.received_at if request.feature_waited_seconds is None else request.updated_at
    gap = min(max(now - seen, timedelta(0)), FEATURE_WAIT_MAX_STEP)
    return timedelta(seconds=request.feature_waited_seconds or 0.0) + gap


def start_batch(
    engine: Engine, batch_key: str, *, run_id: str, now: datetime
) -> list[BatchRequest]:
    """Mark the batch running under ``run_id`` and read its requests.

    Requests that moved on to wait for features belong to a later batch and are left out; done
    and dead-lettered ones are read too, so a re-materialization recomputes the whole batch.
    """
    batches = db.prediction_batches
    requests = db.prediction_requests
    with engine.begin() as connection:
        updated = connection.execute(
            sa.update(batches)
            .where(batches.c.batch_key == batch_key)
            .values(status=BatchStatus.RUNNING, run_id=run_id, updated_at=now)
        )
        if updated.rowcount == 0:
            raise UnknownBatchError(
                f"batch {batch_key!r} is not in prediction_batches: partitions are created by "
                "the sensor or request_predictions_job, not by hand"
            )
        rows = connection.execute(
            sa.select(
                requests.c.message_id,
                requests.c.record_id,
                requests.c.status,
                requests.c.attempts,
                requests.c.received_at,
                requests.c.updated_at,
                requests.c.feature_waited_seconds,
            )
            .where(
                requests.c.batch_key == batch_key,
                requests.c.status != RequestStatus.WAITING_FEATURES,
            )
            .order_by(requests.c.message_id)
        ).all()
    return [BatchRequest(*row) for row in rows]


def fail_batch(engine: Engine, batch_key: str, *, error: str, now: datetime) -> None:
    """Record a failed run; the sensor's reconcile decides whether it runs again."""
    batches = db.prediction_batches
    requests = db.prediction_requests
    with engine.begin() as connection:
        connection.execute(
            sa.update(batches)
            .where(
                batches.c.batch_key == batch_key,
                may_leave_for(batches.c.status, BatchStatus.FAILED),
            )
            .values(status=BatchStatus.FAILED, updated_at=now)
        )
        connection.execute(
            sa.update(requests)
            .where(requests.c.batch_key == batch_key, requests.c.status == RequestStatus.QUEUED)
            .values(error=error[:MAX_ERROR_CHARS], updated_at=now)
        )


def feature_backoff(attempts: int) -> timedelta:
    """How long a request waits before its record is looked up again."""
    return min(FEATURE_BACKOFF_MAX, FEATURE_BACKOFF_BASE * 2 ** min(attempts, 16))


def write_predictions(
    connection: Connection,
    answers: Mapping[int, Prediction],
    *,
    configuration: Configuration,
    text_digests: Mapping[int, str],
    batch_key: str,
    run_id: str,
    now: datetime,
    current: bool = True,
) -> None:
    """Upsert on (record_id, configuration) and make these rows their records' current ones.

    A redelivered or re-run record never gets a second row of one configuration; a record
    predicted under another configuration keeps its earlier row, no longer current. The
    configuration's row is written once (``prediction_configurations``). ``text_digests`` holds
    the digest of the text each record was classified from (``receipts.text_digest``).
    ``current=False`` writes candidate rows (a rollout) that leave every record's current row
    as it is, this configuration's included. A deleted record gets no row (``deleted_records``,
    whose lock keeps it so until the transaction ends).
    """
    deleted = deleted_records(connection, list(answers))
    answers = {
        record_id: answer for record_id, answer in answers.items() if record_id not in deleted
    }
    if not answers:
        return
    digest = configuration.digest
    register_configuration(connection, configuration, now=now)
    table = db.predictions
    for chunk in chunked(sorted(answers), db.IN_CHUNK) if current else ():
        connection.execute(
            sa.update(table)
            .where(
                table.c.record_id.in_(chunk),
                table.c.configuration != digest,
                table.c.is_current.is_(True),
            )
            .values(is_current=False)
        )
    db.upsert(
        connection,
        table,
        [
            {
                "record_id": record_id,
                "configuration": digest,
                "model": configuration.model.name,
                # A text with NUL (a Vertex feature store can hold one) fits PostgreSQL escaped.
                "sequence": db.storable_text(answer.sequence),
                "labels": answer.labels,
                "scores": answer.scores,
                "batch_key": batch_key,
                "run_id": run_id,
                "created_at": now,
                "updated_at": now,
                "text_digest": text_digests[record_id],
                "is_current": current,
            }
            for record_id, answer in answers.items()
        ],
        key=["record_id", "configuration"],
        update=[
            "sequence",
            "labels",
            "scores",
            "batch_key",
            "run_id",
            "updated_at",
            "text_digest",
            *(["is_current"] if current else []),
        ],
    )


def register_configuration(
    connection: Connection, configuration: Configuration, *, now: datetime
) -> None:
    """The configuration's row in ``prediction_configurations``, written once (by its digest)."""
    parameters = configuration.parameters
    db.insert_ignoring_conflicts(
        connection,
        db.prediction_configurations,
        [
            {
                "digest": configuration.digest,
                "model": configuration.model.name,
                "model_digest": configuration.model.weights_digest,
                "known": True,
                "parameters_digest": parameters.digest,
                "candidate_labels": list(parameters.candidate_labels),
                "hypothesis_template": parameters.hypothesis_template,
                "label_descriptions": parameters.travelling_descriptions(),
                "label_descriptions_digest": parameters.label_descriptions_digest,
                "multi_label": parameters.multi_label,
                "created_at": now,
            }
        ],
    )


def settle_missing(
    connection: Connection,
    missing: Sequence[BatchRequest],
    *,
    feature_wait: timedelta,
    now: datetime,
) -> tuple[int, int]:
    """Requests whose record is not in the feature store: wait with backoff, or dead-letter.

    A request for a deleted record (a tombstone in ``record_deletions``) is dead-lettered at once:
    it will never arrive, and waiting would only delay the answer. The others end their wait
    once its credited part (``credited_wait``) reaches ``feature_wait``; the next look-up is
    never later than the rest of the wait.
    """
    deleted = deleted_records(connection, [r.record_id for r in missing])
    waited = {r.message_id: credited_wait(r, now) for r in missing}

    def ended(request: BatchRequest) -> bool:
        return request.record_id in deleted or waited[request.message_id] >= feature_wait

    expired = [r for r in missing if ended(r)]
    waiting = [r for r in missing if not ended(r)]
    dead_letter_requests(connection, expired, UNKNOWN_RECORD, now)
    if waiting:
        table = db.prediction_requests
        connection.execute(
            sa.update(table)
            .where(
                table.c.message_id == sa.bindparam("key"),
                may_leave_for(table.c.status, RequestStatus.WAITING_FEATURES),
            )
            .values(
                status=RequestStatus.WAITING_FEATURES,
                attempts=table.c.attempts + 1,
                not_before=sa.bindparam("retry_at"),
                feature_waited_seconds=sa.bindparam("waited"),
                updated_at=now,
            ),
            [
                {
                    "key": r.message_id,
                    "retry_at": now
                    + min(feature_backoff(r.attempts), feature_wait - waited[r.message_id]),
                    "waited": waited[r.message_id].total_seconds(),
                }
                for r in waiting
            ],
        )
    return len(waiting), len(expired)


def deleted_records(connection: Connection, record_ids: Sequence[int]) -> set[int]:
    """Those of ``record_ids`` that were deleted (``records.delete_record``), with the rows of
    the others locked against deletion until this transaction ends.

    The lock is what makes the answer hold while the caller writes predictions. On PostgreSQL
    (read committed) a deletion that commits between this check and the caller's commit would
    otherwise leave a prediction of the deleted text: ``delete_record`` deletes the record's
    predictions before this transaction's rows are visible to it. ``FOR KEY SHARE`` (the lock a
    foreign key check takes) makes such a deletion wait for this transaction and then delete
    what it wrote; a deletion that came first holds its row, so the lock waits for it, the row is
    gone, and the tombstone read next (a new snapshot per statement) names it. Text edits take no
    conflicting lock. SQLite serializes writers with its database lock and renders no clause.
    """
    ids = sorted(set(record_ids))
    points = db.data_points
    for chunk in chunked(ids, db.IN_CHUNK):
        connection.execute(
            sa.select(points.c.id)
            .where(points.c.id.in_(chunk))
            .with_for_update(read=True, key_share=True)
        )
    return db.existing_values(connection, db.record_deletions.c.record_id, ids)


@dataclass(frozen=True)
class Settlement:
    """What a run learned about its batch, settled in one transaction by ``settle_batch``.

    ``answers`` holds a prediction by record id for the records the model predicted, ``refused``
    the server's reason by record id for those it refused on their own (or that were too large
    to send); ``configuration`` is what made the predictions (the model the server reported
    and the request's parameters), None when no record reached the model; ``text_digests``
    the digest of each predicted record's text.
    """

    batch_key: str
    run_id: str
    requests: Sequence[BatchRequest]
    configuration: Configuration | None
    answers: Mapping[int, Prediction]
    feature_wait: timedelta
    now: datetime
    refused: Mapping[int, str] = field(default_factory=dict)
    text_digests: Mapping[int, str] = field(default_factory=dict)
    # The candidate digest when the batch belongs to a rollout: its predictions are written
    # beside the current ones (never current), and only while the rollout is running.
    rollout: str | None = None
    # Seconds the model call took (wall time around it); None when no record reached the
    # model. Kept on the batch with ``len(answers)``, the texts the model predicted in that time
    # (a record deleted meanwhile included; ``prediction_batches.model_seconds`` and
    # ``predicted``): a rollout's report divides them for each side's texts/s.
    model_seconds: float | None = None


def rollout_is_running(connection: Connection, candidate: str) -> bool:
    """Whether a rollout still takes candidate predictions, its row locked until the commit.

    ``rollout.discard`` and ``rollout.promote`` lock the same row first, so a settlement either
    commits its candidate rows before they close the rollout, or waits and then writes none.
    """
    return locked_rollout_status(connection, candidate) == ROLLOUT_RUNNING


def settle_batch(engine: Engine, settlement: Settlement) -> tuple[int, int]:
    """One transaction: predictions, request statuses, dead letters and the batch's success.

    A record the server refused is dead-lettered alone with the server's reason; dead letters of
    the records predicted now are resolved by this run in the same transaction. Returns how many
    requests now wait for features and how many became dead letters.
    """
    now = settlement.now
    table = db.prediction_requests
    if settlement.answers and settlement.configuration is None:
        raise ValueError(
            f"batch {settlement.batch_key}: {len(settlement.answers)} predictions without the "
            "configuration that made them; a Settlement with answers needs one"
        )
    with engine.begin() as connection:
        # The deletion check below must hold until the commit: on SQLite only the write lock,
        # taken now, keeps a concurrent ``delete_record`` out (``deleted_records`` locks rows
        # on PostgreSQL).
        db.hold_sqlite_write_lock(connection)
        candidate = settlement.rollout is not None
        # A rollout closed (discarded, promoted) since its batch was written takes no more rows:
        # its requests are done with nothing written.
        closed = candidate and not rollout_is_running(connection, settlement.rollout)
        # A record deleted after the run fetched its features is not predicted: its requests
        # join the missing ones, which dead-letters them ("unknown record id").
        deleted = deleted_records(connection, [r.record_id for r in settlement.requests])
        answers = {k: v for k, v in settlement.answers.items() if k not in deleted}
        refusals = {k: v for k, v in settlement.refused.items() if k not in deleted}
        open_requests = [r for r in settlement.requests if r.status != RequestStatus.DEAD_LETTERED]
        done = [r.message_id for r in settlement.requests if r.record_id in answers]
        refused = [r for r in open_requests if r.record_id in refusals]
        missing = [
            r for r in open_requests if r.record_id not in answers and r.record_id not in refusals
        ]
        if closed:
            answers, done, refused, missing = {}, [r.message_id for r in open_requests], [], []
        if settlement.configuration is not None and answers:
            write_predictions(
                connection,
                answers,
                configuration=settlement.configuration,
                text_digests=settlement.text_digests,
                batch_key=settlement.batch_key,
                run_id=settlement.run_id,
                now=now,
                current=not candidate,
            )
        for chunk in chunked(done, db.IN_CHUNK):
            connection.execute(
                sa.update(table)
                .where(
                    table.c.message_id.in_(chunk),
                    may_leave_for(table.c.status, RequestStatus.DONE),
                )
                .values(status=RequestStatus.DONE, error=None, updated_at=now)
            )
        # A candidate's prediction resolves only its rollout's dead letters (and a current one
        # only the ordinary ones): the record's prediction and the candidate's are not the same.
        resolve_dead_letters(
            connection,
            list(answers),
            run_id=settlement.run_id,
            now=now,
            rollout=settlement.rollout,
        )
        dead_letter_requests(
            connection,
            refused,
            "the model server refused the record",
            now,
            source=DeadLetterSource.MODEL,
            reasons={r.message_id: refusals[r.record_id] for r in refused},
        )
        waiting, dead = settle_missing(
            connection, missing, feature_wait=settlement.feature_wait, now=now
        )
        dead += len(refused)
        batches = db.prediction_batches
        connection.execute(
            sa.update(batches)
            .where(
                batches.c.batch_key == settlement.batch_key,
                may_leave_for(batches.c.status, BatchStatus.SUCCEEDED),
            )
            .values(
                status=BatchStatus.SUCCEEDED,
                updated_at=now,
                predicted=len(settlement.answers) if settlement.model_seconds is not None else None,
                model_seconds=settlement.model_seconds,
            )
        )
    return waiting, dead
