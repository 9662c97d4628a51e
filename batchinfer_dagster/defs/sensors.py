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
requests runs for batches written straight to the ledger (``request_predictions_job``), looks up
requests waiting for features in the feature store (a run only for records that arrived;
``ledger.feature_wait``) and reconciles a bounded number of batches whose runs never started or
failed, or ended without settling them.

Only the pull, the ack and the dead-letter read-back need the queue. When it is unreachable
(``QueueUnavailableError``) the tick pulls nothing and says so, and still closes pending
batches, requests runs for launchpad batches, looks up waiting requests and reconciles: work
already in the ledger never waits for the queue. A failed ack leaves the messages in the queue;
their redelivery is recognized by the ledger (same request keys) and acked by a later tick. A
feature store that fails the look-up of waiting requests is charged to those requests
(``ledger.recheck_waiting``) and stops nothing else.
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
from batchinfer_dagster.clients.feature_store import FeatureStore
from batchinfer_dagster.clients.queue import (
    DeadlineExtender,
    QueueUnavailableError,
    ReceivedMessage,
    RequestQueue,
)
from batchinfer_dagster.defs.asset_events import FEATURES
from batchinfer_dagster.defs.jobs import predictions_job
from batchinfer_dagster.defs.partitions import PREDICTION_BATCHES
from batchinfer_dagster.defs.resources.feature_store import FeatureStoreResource
from batchinfer_dagster.defs.resources.ledger import LedgerResource
from batchinfer_dagster.defs.resources.request_queue import RequestQueueResource
from batchinfer_dagster.ledger.reconcile import RECHECK_AFTER, RECONCILE_LIMIT, STALE_AFTER

SENSOR_NAME = "prediction_requests_sensor"
PARTITION_TAG = "dagster/partition"
RUN_KEY_TAG = "dagster/run_key"
# Written on each run in flight by the stop of `make run` (batchinfer_tools.run) before it
# cancels them: a canceled run looks the same whether a user stopped `make run`, canceled it in
# the UI or it failed, and only the first costs its batch no attempt (ledger.reconcile).
STOPPED_BY_TAG = "batchinfer/stopped_by"

# Longest wait for the dead-letter subscription, which is empty almost always.
DEAD_LETTER_PULL_SECONDS = 1.0
# Longest wait of the one-message pull after a full pull: a backlog answers at once, so a
# longer wait would only delay the closing of a drained queue's partial batch. Above zero, as
# the Pub/Sub client makes no call with no time left.
BACKLOG_PROBE_SECONDS = 0.5

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
    # The queue did not answer the pull or the ack (the ledger's own work went on).
    queue_error: str | None = None
    # The feature store failed the look-up of waiting requests (charged to them).
    feature_store_error: str | None = None
    # A failed ack-deadline extension: the tick's messages may be redelivered (not lost).
    lease_error: str | None = None
    rebatched: list[str] = field(default_factory=list)
    # Waiting requests looked up and still missing from the feature store (no batch, no run),
    # and those whose feature wait ended with that look-up (dead letters).
    still_waiting: int = 0
    waited_out: int = 0
    retried: dict[str, int] = field(default_factory=dict)
    dead_lettered: list[str] = field(default_factory=list)

    def summary(self) -> str:
        summary = (
            f"pulled {self.pulled}, accepted {self.accepted}, closed {self.batches} batches, "
            f"pending {self.pending}, redelivered {self.redelivered}, "
            f"malformed {self.malformed}, queue dead letters {self.queue_dead_letters}, "
            f"re-batched {len(self.rebatched)} batches, "
            f"still waiting for features {self.still_waiting}, "
            f"waited out {self.waited_out}, "
            f"retried {len(self.retried)}, dead-lettered {len(self.dead_lettered)} batches"
        )
        return "; ".join([summary, *self.problems()])

    def problems(self) -> list[str]:
        """The tick's failures that stopped part of its work, each a line for the sensor log."""
        candidates = (
            self.queue_error,
            self.dead_letter_error,
            self.lease_error,
            self.feature_store_error,
        )
        return [problem for problem in candidates if problem]


def newest_features_materialization(instance: DagsterInstance) -> str | None:
    """The storage id of the newest ``features`` materialization, as the sensor's cursor."""
    records = instance.fetch_materializations(FEATURES, limit=1).records
    return str(records[0].storage_id) if records else None


def run_key(batch_key: str, attempt: int) -> str:
    """The run key of a batch's attempt: Dagster launches one run per key and sensor."""
    return batch_key if attempt <= 1 else f"{batch_key}#{attempt}"


def current_runs(
    instance: DagsterInstance, candidates: Sequence[ledger.BatchState]
) -> dict[str, ledger.RunState]:
    """What Dagster knows of each candidate batch's current run (``ledger.CurrentRuns``).

    A batch is in flight when any run of its partition is unfinished (a sensor run queued for its
    pool, a re-materialization from the UI). Its current run is the run of its current attempt
    (run key ``run_key(batch, attempts)``) or, while it is running, the run that started it (the
    ledger stores its id; a run launched another way has no partition tag): when that run is
    finished and the batch is not settled, the run ended without settling it: ``INTERRUPTED``
    when the stop of ``make run`` tagged it (``STOPPED_BY_TAG``), else ``FINISHED``. Two indexed
    queries: runs by partition tag, runs by id.
    """
    keys = [c.batch_key for c in candidates]
    records = list(instance.get_run_records(RunsFilter(tags={PARTITION_TAG: keys})))
    started_by = {
        c.run_id: c for c in candidates if c.run_id and c.status == ledger.BatchStatus.RUNNING
    }
    if started_by:
        records += instance.get_run_records(RunsFilter(run_ids=list(started_by)))
    by_key = {c.batch_key: c for c in candidates}
    states: dict[str, ledger.RunState] = {}
    for record in records:
        run = record.dagster_run
        started = started_by.get(run.run_id)
        batch = started or by_key.get(run.tags.get(PARTITION_TAG, ""))
        if batch is None:
            continue
        if run.status not in _FINISHED:
            states[batch.batch_key] = ledger.RunState.IN_FLIGHT
        elif states.get(batch.batch_key) is not ledger.RunState.IN_FLIGHT and (
            started is not None
            or run.tags.get(RUN_KEY_TAG) == run_key(batch.batch_key, batch.attempts)
        ):
            states[batch.batch_key] = (
                ledger.RunState.INTERRUPTED
                if STOPPED_BY_TAG in run.tags
                else ledger.RunState.FINISHED
            )
    return states


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


@dataclass(frozen=True)
class Pull:
    """One tick's messages, and whether taking them drained the queue (no backlog is left)."""

    messages: list[ReceivedMessage]
    drained: bool
    error: str | None = None


def pull_requests(queue: RequestQueue, max_pull: int, timeout: float) -> Pull:
    """Up to ``max_pull`` messages (one more after a full pull), and whether the queue is drained.

    A pull that returns fewer than it asked for drained the queue, and the closing rule
    (``ledger/closing.py``) closes the partial batch at once. One that returns exactly
    ``max_pull`` cannot tell a backlog from a queue it just emptied, so a second pull asks for
    one message, waiting at most ``BACKLOG_PROBE_SECONDS``: none means drained, and the partial
    batch closes on this tick instead of at its max wait; one means a backlog, and it joins this
    tick's messages (handing it back would count a delivery towards the dead-letter policy).

    A queue that cannot be reached for the first pull gives no messages and counts as drained,
    so pending requests still close (module docstring); one that fails the second gives the
    first pull's messages, not drained, and the error.
    """
    try:
        messages = queue.pull(max_pull, timeout)
    except QueueUnavailableError as exc:
        return Pull(
            [], drained=True, error=f"pulling the request queue failed, nothing was pulled: {exc}"
        )
    if len(messages) < max_pull:
        return Pull(messages, drained=True)
    try:
        more = queue.pull(1, BACKLOG_PROBE_SECONDS)
    except QueueUnavailableError as exc:
        return Pull(
            messages,
            drained=False,
            error=f"looking for a backlog after a full pull of {max_pull} failed, so the "
            f"partial batch waits for the next pull: {exc}",
        )
    return Pull([*messages, *more], drained=not more)


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
    feature_store: FeatureStore,
    features_changed: bool = False,
    clock: Callable[[], datetime] = db.utcnow,
    stale_after: timedelta = STALE_AFTER,
    recheck_after: timedelta = RECHECK_AFTER,
    lease_seconds: int,
) -> TickOutcome:
    """One sensor tick with explicit collaborators, so tests can inject a queue that fails.

    ``features_changed``: the feature store was imported into since the last tick, so every
    request waiting for features is looked up now rather than at its backoff.
    """
    engine = policy.get_engine()
    require_database(engine)
    pull = pull_requests(queue, policy.max_pull, policy.pull_timeout_seconds)
    messages = pull.messages
    queue_errors = [pull.error] if pull.error else []
    closing = policy.batch_closing()
    # Until the ack, the messages stay ours however long the ledger transaction takes.
    with DeadlineExtender(queue, [m.ack_id for m in messages], lease_seconds) as extender:
        ingest = ledger.ingest_messages(
            engine,
            messages,
            queue=queue.kind,
            batch_size=closing.max_size,
            max_wait=closing.max_wait,
            drained=pull.drained,
            now=clock(),
        )
        if ingest.batch_keys or ingest.resumed:
            instance.add_dynamic_partitions(
                PREDICTION_BATCHES, [*ingest.batch_keys, *ingest.resumed]
            )
    if ingest.ack_ids:
        try:
            queue.ack(ingest.ack_ids)
        except QueueUnavailableError as exc:
            # The ledger holds them: their redelivery is recognized and acked by a later tick.
            queue_errors.append(f"acking {len(ingest.ack_ids)} messages failed: {exc}")
    queue_dead = 0
    dead_letter_error = None
    if not queue_errors:
        try:
            queue_dead = read_back_dead_letters(engine, policy, queue, now=clock())
        except QueueUnavailableError as exc:
            # Reported on every tick (sensor log and skip reason) without stopping the intake,
            # re-batching and reconcile that do not depend on the dead-letter subscription.
            dead_letter_error = f"reading the dead-letter subscription failed: {exc}"
    requested = ledger.request_new_batches(engine, now=clock(), limit=RECONCILE_LIMIT)
    # A failing look-up is charged to the waiting requests (the ledger records it on them);
    # reconcile and this tick's run requests do not depend on the feature store.
    rechecked = ledger.recheck_waiting(
        engine,
        lambda record_ids: feature_store.fetch(record_ids).keys(),
        now=clock(),
        feature_wait=policy.feature_wait(),
        batch_size=policy.batch_size,
        limit=policy.max_pull,
        wake=features_changed,
    )
    rebatched = rechecked.batch_keys
    if rebatched or requested:
        instance.add_dynamic_partitions(PREDICTION_BATCHES, [*rebatched, *requested])
    reconciled = ledger.reconcile(
        engine,
        lambda candidates: current_runs(instance, candidates),
        max_attempts=policy.max_attempts,
        now=clock(),
        stale_after=stale_after,
        recheck_after=recheck_after,
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
        queue_error="; ".join(queue_errors) or None,
        feature_store_error=rechecked.lookup_error,
        lease_error=extender.error,
        rebatched=rebatched,
        still_waiting=rechecked.still_waiting,
        waited_out=rechecked.dead_lettered,
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
    feature_store: FeatureStoreResource,
) -> SensorResult:
    """A tick moves at most ``BATCHINFER_MAX_PULL`` messages: short at any backlog.

    The cursor is the storage id of the newest ``features`` materialization seen (from a run or
    reported by ``batchinfer import-data``): a newer one wakes the requests waiting for features.
    """
    newest_import = newest_features_materialization(context.instance)
    with request_queue.open(unreachable_ok=True) as queue, feature_store.open() as store:
        outcome = process_tick(
            context.instance,
            ledger,
            queue,
            feature_store=store,
            features_changed=newest_import is not None and newest_import != context.cursor,
            lease_seconds=request_queue.ack_deadline_seconds,
        )
    for problem in outcome.problems():
        context.log.warning(problem)
    context.log.info(outcome.summary())
    if not outcome.run_requests:
        return SensorResult(
            skip_reason=SkipReason(f"nothing to run: {outcome.summary()}"), cursor=newest_import
        )
    return SensorResult(run_requests=outcome.run_requests, cursor=newest_import)
