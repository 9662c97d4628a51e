"""``prediction_requests_sensor``: moves queue messages into the ledger and launches batch runs.

Order of a tick (docs/architecture.md, "Delivery guarantees"): check the database answers (or
pull nothing) → pull → validate each message on its own → one ledger transaction → register the
batch partitions → ack → read back what the queue service dead-lettered itself (Pub/Sub's
dead-letter subscription) → run requests. A message that fails validation in any way is a dead
letter of its own; it never fails the tick, so the rest of its pull is acked. From the pull to
the ack the messages' ack deadline is extended in the background, so a slow tick keeps them.
Partitions are registered by the tick itself, before the ack, rather than through
``SensorResult.dynamic_partitions_requests`` (which Dagster applies only after the function
returns): when the ack happens, everything a redelivery could not recreate exists. Each tick then
requests runs for batches written straight to the ledger (``request_predictions_job``),
re-batches requests whose feature backoff passed and reconciles a bounded number of batches
whose runs never started or failed.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import sqlalchemy as sa
from dagster import (
    DagsterInstance,
    DagsterRunStatus,
    DefaultSensorStatus,
    RunRequest,
    RunsFilter,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)
from sqlalchemy import Engine

from batchinfer_dagster import db, ledger
from batchinfer_dagster.clients.queue import DeadlineExtender, QueueUnavailableError, RequestQueue
from batchinfer_dagster.jobs import predictions_job
from batchinfer_dagster.ledger.reconcile import RECONCILE_LIMIT, STALE_AFTER
from batchinfer_dagster.partitions import PREDICTION_BATCHES
from batchinfer_dagster.resources.ledger import LedgerResource
from batchinfer_dagster.resources.request_queue import RequestQueueResource

SENSOR_NAME = "prediction_requests_sensor"
PARTITION_TAG = "dagster/partition"

# Longest wait for the dead-letter subscription, which is empty almost always.
DEAD_LETTER_PULL_SECONDS = 1.0

_FINISHED = {DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED}
NOT_FINISHED = [status for status in DagsterRunStatus if status not in _FINISHED]


@dataclass
class TickOutcome:
    """What one tick did: the sensor turns it into a ``SensorResult``."""

    run_requests: list[RunRequest] = field(default_factory=list)
    pulled: int = 0
    accepted: int = 0
    # Accepted requests waiting for their batch to close (ledger/closing.py).
    pending: int = 0
    batches: int = 0
    redelivered: int = 0
    malformed: int = 0
    # Messages the queue service dead-lettered itself (Pub/Sub), read back into dead_letters.
    queue_dead_letters: int = 0
    dead_letter_error: str | None = None
    # A failed ack-deadline extension: the tick's messages may be redelivered (not lost).
    lease_error: str | None = None
    rebatched: list[str] = field(default_factory=list)
    retried: dict[str, int] = field(default_factory=dict)
    dead_lettered: list[str] = field(default_factory=list)

    def summary(self) -> str:
        summary = (
            f"pulled {self.pulled}, accepted {self.accepted}, closed {self.batches} batches, "
            f"pending {self.pending}, redelivered {self.redelivered}, "
            f"malformed {self.malformed}, queue dead letters {self.queue_dead_letters}, "
            f"re-batched {len(self.rebatched)} batches, "
            f"retried {len(self.retried)}, dead-lettered {len(self.dead_lettered)} batches"
        )
        problems = [p for p in (self.dead_letter_error, self.lease_error) if p]
        return "; ".join([summary, *problems])


def run_key(batch_key: str, attempt: int) -> str:
    """The run key of a batch's attempt: Dagster launches one run per key and sensor."""
    return batch_key if attempt <= 1 else f"{batch_key}#{attempt}"


def batches_in_flight(
    instance: DagsterInstance, candidates: Sequence[ledger.BatchState]
) -> set[str]:
    """Batch keys with an unfinished Dagster run (queued for the pool, starting or running).

    Runs are found by partition tag (sensor runs, UI re-materializations) and by the run id the
    ledger stored (a run launched some other way has no partition tag): two indexed queries.
    """
    keys = [c.batch_key for c in candidates]
    records = list(
        instance.get_run_records(RunsFilter(tags={PARTITION_TAG: keys}, statuses=NOT_FINISHED))
    )
    keys_by_run: dict[str, list[str]] = {}
    for candidate in candidates:
        if candidate.run_id:
            keys_by_run.setdefault(candidate.run_id, []).append(candidate.batch_key)
    if keys_by_run:
        records += instance.get_run_records(
            RunsFilter(run_ids=list(keys_by_run), statuses=NOT_FINISHED)
        )
    in_flight: set[str] = set()
    for record in records:
        run = record.dagster_run
        partition = run.tags.get(PARTITION_TAG)
        in_flight.update([partition] if partition else keys_by_run[run.run_id])
    return in_flight


def read_back_dead_letters(
    engine: Engine, policy: LedgerResource, queue: RequestQueue, *, now: datetime
) -> int:
    """Move what the queue service dead-lettered into ``dead_letters``; ack after the commit."""
    messages = queue.pull_dead_letters(
        policy.max_pull, min(policy.pull_timeout_seconds, DEAD_LETTER_PULL_SECONDS)
    )
    if not messages:
        return 0
    written = ledger.record_queue_dead_letters(engine, messages, queue=queue.kind, now=now)
    queue.ack_dead_letters([message.ack_id for message in messages])
    return written


def require_database(engine: Engine) -> None:
    """Raise unless the app database answers, before any message is pulled.

    A tick that pulled while the database was down would fail after the pull, and each such
    delivery counts towards the subscription's dead-letter policy: after five, valid requests
    would be dead-lettered because of an outage. Not pulling keeps them in the queue untouched.
    """
    try:
        with engine.connect() as connection:
            connection.execute(sa.text("SELECT 1"))
    except sa.exc.SQLAlchemyError as exc:
        where = engine.url.render_as_string(hide_password=True)
        cause = " ".join(str(exc.orig if isinstance(exc, sa.exc.DBAPIError) else exc).split())
        raise db.DatabaseUnavailableError(
            f"the app database {where} does not answer ({cause}); nothing was pulled, so no "
            "delivery attempt was spent. Check the database (Cloud SQL) and "
            "BATCHINFER_DATABASE_URL; the next tick tries again."
        ) from exc


def process_tick(
    instance: DagsterInstance,
    policy: LedgerResource,
    queue: RequestQueue,
    *,
    clock: Callable[[], datetime] = db.utcnow,
    stale_after: timedelta = STALE_AFTER,
    lease_seconds: int = 60,
) -> TickOutcome:
    """One sensor tick with explicit collaborators, so tests can inject a queue that fails."""
    engine = policy.get_engine()
    require_database(engine)
    messages = queue.pull(policy.max_pull, policy.pull_timeout_seconds)
    closing = policy.batch_closing()
    # Until the ack, the messages stay ours however long the ledger transaction takes.
    with DeadlineExtender(queue, [m.ack_id for m in messages], lease_seconds) as extender:
        ingest = ledger.ingest_messages(
            engine,
            messages,
            queue=queue.kind,
            batch_size=closing.max_size,
            max_wait=closing.max_wait,
            now=clock(),
        )
        if ingest.batch_keys or ingest.resumed:
            instance.add_dynamic_partitions(
                PREDICTION_BATCHES, [*ingest.batch_keys, *ingest.resumed]
            )
    if ingest.ack_ids:
        queue.ack(ingest.ack_ids)
    try:
        queue_dead = read_back_dead_letters(engine, policy, queue, now=clock())
        dead_letter_error = None
    except QueueUnavailableError as exc:
        # Reported on every tick (sensor log and skip reason) without stopping the intake,
        # re-batching and reconcile that do not depend on the dead-letter subscription.
        queue_dead = 0
        dead_letter_error = f"reading the dead-letter subscription failed: {exc}"
    requested = ledger.request_new_batches(engine, now=clock(), limit=RECONCILE_LIMIT)
    rebatched = ledger.rebatch_waiting(
        engine, now=clock(), batch_size=policy.batch_size, limit=policy.max_pull
    )
    if rebatched or requested:
        instance.add_dynamic_partitions(PREDICTION_BATCHES, [*rebatched, *requested])
    reconciled = ledger.reconcile(
        engine,
        lambda candidates: batches_in_flight(instance, candidates),
        max_attempts=policy.max_attempts,
        now=clock(),
        stale_after=stale_after,
    )
    retried = reconciled.retried
    if retried:
        # A tick that died after its commit may have left a batch without its partition.
        instance.add_dynamic_partitions(PREDICTION_BATCHES, sorted(retried))
    attempts = dict.fromkeys([*ingest.batch_keys, *rebatched], 1)
    attempts.update(requested)
    attempts.update(ingest.resumed)
    attempts.update(retried)
    run_requests = [
        RunRequest(partition_key=key, run_key=run_key(key, attempt))
        for key, attempt in attempts.items()
    ]
    return TickOutcome(
        run_requests=run_requests,
        pulled=len(messages),
        accepted=ingest.accepted,
        pending=ingest.pending,
        batches=len(ingest.batch_keys),
        redelivered=ingest.redelivered,
        malformed=ingest.dead_lettered,
        queue_dead_letters=queue_dead,
        dead_letter_error=dead_letter_error,
        lease_error=extender.error,
        rebatched=rebatched,
        retried=retried,
        dead_lettered=reconciled.dead_lettered,
    )


@sensor(
    name=SENSOR_NAME,
    target=predictions_job,
    minimum_interval_seconds=5,
    default_status=DefaultSensorStatus.RUNNING,
    description="Pull prediction requests into the ledger; one predictions run per batch.",
)
def prediction_requests_sensor(
    context: SensorEvaluationContext,
    ledger: LedgerResource,
    request_queue: RequestQueueResource,
) -> SensorResult:
    """A tick moves at most ``BATCHINFER_MAX_PULL`` messages: short at any backlog."""
    with request_queue.open() as queue:
        outcome = process_tick(
            context.instance, ledger, queue, lease_seconds=request_queue.ack_deadline_seconds
        )
    for problem in (outcome.dead_letter_error, outcome.lease_error):
        if problem:
            context.log.warning(problem)
    context.log.info(outcome.summary())
    if not outcome.run_requests:
        return SensorResult(skip_reason=SkipReason(f"nothing to run: {outcome.summary()}"))
    return SensorResult(run_requests=outcome.run_requests)
