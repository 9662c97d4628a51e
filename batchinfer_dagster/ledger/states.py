"""The states of a request and of a ledger batch, and the transitions between them.

docs/architecture.md draws both machines. Every ledger update that changes a status goes
through ``may_become``: it names the states a row may leave for the target, and the update's
WHERE clause keeps to them, so a transition outside the machine changes no row.
"""

from __future__ import annotations

from enum import StrEnum

import sqlalchemy as sa


class RequestStatus(StrEnum):
    """``prediction_requests.status``."""

    QUEUED = "queued"
    WAITING_FEATURES = "waiting_features"
    DONE = "done"
    DEAD_LETTERED = "dead_lettered"


class BatchStatus(StrEnum):
    """``prediction_batches.status``."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    DEAD_LETTERED = "dead_lettered"


class RolloutStatus(StrEnum):
    """``rollouts.status``: running while its batches write candidate predictions, then closed
    for good as promoted (the candidate is current) or discarded (its rows deleted)."""

    RUNNING = "running"
    PROMOTED = "promoted"
    DISCARDED = "discarded"


class DeadLetterSource(StrEnum):
    """``dead_letters.source``: who gave up on the item."""

    SENSOR = "sensor"  # a message that is not a valid request
    LEDGER = "ledger"  # a request that can never be predicted
    QUEUE = "queue"  # a message the local queue delivered too often without an ack
    MODEL = "model"  # a record the model server refused on its own (or too large to send)
    PUBSUB_DEAD_LETTER = "pubsub-dead-letter"  # read back from Pub/Sub's dead-letter topic


_R = RequestStatus
_B = BatchStatus

# target → the states a row may be in to move there.
REQUEST_TRANSITIONS: dict[RequestStatus, frozenset[RequestStatus]] = {
    # Re-batched after its feature backoff.
    _R.QUEUED: frozenset({_R.WAITING_FEATURES}),
    # Its record is missing from the feature store (again, on a re-materialization), or is
    # still missing when the sensor looks it up again (``feature_wait.recheck_waiting``).
    _R.WAITING_FEATURES: frozenset({_R.QUEUED, _R.DONE, _R.WAITING_FEATURES}),
    # Predicted; a re-materialization recomputes done and dead-lettered requests in place.
    _R.DONE: frozenset({_R.QUEUED, _R.DONE, _R.DEAD_LETTERED}),
    _R.DEAD_LETTERED: frozenset({_R.QUEUED, _R.WAITING_FEATURES, _R.DONE}),
}
BATCH_TRANSITIONS: dict[BatchStatus, frozenset[BatchStatus]] = {
    # Another attempt (reconcile), or the first one of a batch written without a run.
    _B.QUEUED: frozenset({_B.QUEUED, _B.RUNNING, _B.FAILED}),
    # A run starts; re-materializing a settled batch starts it again.
    _B.RUNNING: frozenset(_B),
    _B.SUCCEEDED: frozenset({_B.RUNNING}),
    _B.FAILED: frozenset({_B.RUNNING}),
    _B.DEAD_LETTERED: frozenset({_B.QUEUED, _B.RUNNING, _B.FAILED}),
}

FINAL_REQUEST_STATUSES = frozenset({_R.DONE, _R.DEAD_LETTERED})
SETTLED_BATCH_STATUSES = frozenset({_B.SUCCEEDED, _B.DEAD_LETTERED})


def may_become(target: RequestStatus | BatchStatus) -> list[str]:
    """The statuses a row may leave for ``target``, as values for an ``IN`` clause."""
    if isinstance(target, RequestStatus):
        return sorted(REQUEST_TRANSITIONS[target])
    return sorted(BATCH_TRANSITIONS[target])


def may_leave_for(column: sa.Column, target: RequestStatus | BatchStatus) -> sa.ColumnElement[bool]:
    """WHERE ``column`` holds a status that may become ``target``.

    Written as ORed equalities rather than ``IN``: an expanding ``IN`` cannot be used in the
    executemany updates that settle many requests with their own values.
    """
    return sa.or_(*(column == status for status in may_become(target)))
