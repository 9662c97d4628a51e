"""The request ledger: what the sensor and the prediction runs write, Dagster-free.

The database is the source of truth and the queue only transport, so every step that must not be
lost or repeated is one transaction here. One module per use case:

- ``states``: request and batch states with their transitions;
- ``messages``: the request message, encoded and parsed in one place;
- ``closing``: when a ledger batch closes (its size, or its oldest request's wait);
- ``intake``: a pull into the ledger, launchpad requests, re-batching after a feature wait;
- ``runs``: a run's batch: start, settle, fail;
- ``rollout_lock``: a rollout's row read locked, by every path that writes by its status;
- ``reconcile``: another attempt for failed or lost batches (the Dagster query passed in);
- ``dead_letters``: what will never succeed, with the reason; resolved when predicted later;
- ``replay``: publish requests again for open dead letters, once each;
- ``retention``: finished rows of old settled batches;
- ``readback``: what a batch stored, for its checks.

docs/architecture.md draws the state machines and lists the guarantees. The names below are
the package's public API, re-exported so callers write ``ledger.ingest_messages``.
"""

from batchinfer_dagster.ledger.closing import BatchClosing
from batchinfer_dagster.ledger.dead_letters import (
    UNKNOWN_RECORD,
    dead_letter_batch,
    last_error,
    record_queue_dead_letters,
    resolve_dead_letters,
)
from batchinfer_dagster.ledger.feature_wait import (
    WAITING_REASON,
    FeatureLookup,
    RecheckOutcome,
    WaitingRequest,
    recheck_waiting,
    waiting_requests,
)
from batchinfer_dagster.ledger.intake import (
    IngestResult,
    classify_messages,
    count_attempt,
    create_batches,
    ingest_messages,
    request_new_batches,
    write_batches,
)
from batchinfer_dagster.ledger.messages import (
    MAX_NESTING,
    MAX_PAYLOAD_BYTES,
    MAX_RECORD_ID,
    InvalidRequestError,
    ReceivedMessage,
    json_nesting_depth,
    parse_record_id,
    record_id_of_payload,
    record_id_of_text,
    request_key,
    request_payload,
)
from batchinfer_dagster.ledger.readback import batch_record_ids, read_predictions
from batchinfer_dagster.ledger.reconcile import (
    BatchState,
    CurrentRuns,
    ReconcileOutcome,
    RunState,
    batches_to_reconcile,
    reconcile,
    touch_batches,
)
from batchinfer_dagster.ledger.replay import DeadLetterFilter, ReplayReport, replay_dead_letters
from batchinfer_dagster.ledger.retention import old_settled_batches, prune_settled, settled_batches
from batchinfer_dagster.ledger.runs import (
    FEATURE_BACKOFF_BASE,
    FEATURE_BACKOFF_MAX,
    FEATURE_WAIT_MAX_STEP,
    BatchRequest,
    Settlement,
    UnknownBatchError,
    fail_batch,
    feature_backoff,
    settle_batch,
    start_batch,
    write_predictions,
)
from batchinfer_dagster.ledger.states import (
    BatchStatus,
    DeadLetterSource,
    RequestStatus,
)

__all__ = [
    "BatchClosing",
    "DeadLetterFilter",
    "ReplayReport",
    "classify_messages",
    "json_nesting_depth",
    "record_id_of_payload",
    "record_id_of_text",
    "record_queue_dead_letters",
    "replay_dead_letters",
    "resolve_dead_letters",
    "FEATURE_BACKOFF_BASE",
    "FEATURE_BACKOFF_MAX",
    "FEATURE_WAIT_MAX_STEP",
    "MAX_PAYLOAD_BYTES",
    "MAX_NESTING",
    "MAX_RECORD_ID",
    "UNKNOWN_RECORD",
    "BatchRequest",
    "BatchState",
    "BatchStatus",
    "DeadLetterSource",
    "IngestResult",
    "InvalidRequestError",
    "ReceivedMessage",
    "FeatureLookup",
    "RecheckOutcome",
    "ReconcileOutcome",
    "CurrentRuns",
    "RunState",
    "RequestStatus",
    "Settlement",
    "UnknownBatchError",
    "batch_record_ids",
    "batches_to_reconcile",
    "count_attempt",
    "create_batches",
    "dead_letter_batch",
    "fail_batch",
    "feature_backoff",
    "ingest_messages",
    "last_error",
    "old_settled_batches",
    "parse_record_id",
    "prune_settled",
    "read_predictions",
    "recheck_waiting",
    "waiting_requests",
    "WAITING_REASON",
    "WaitingRequest",
    "reconcile",
    "request_key",
    "request_new_batches",
    "write_batches",
    "request_payload",
    "settle_batch",
    "settled_batches",
    "start_batch",
    "touch_batches",
    "write_predictions",
]
