"""When a ledger batch closes: at its size, when the queue is drained, or when its oldest
request has waited long enough.

A run costs a fixed start-up (a process locally, a Cloud Run Job execution in production: tens
of seconds) before its model time, so a batch should be as large as the traffic allows, yet a
lone request must not wait for company that is not coming. The rule is the shape of Nagle's
algorithm (RFC 896: a full segment goes at once; a partial one is held only while there is a
reason to expect more to coalesce with it, for TCP an unacknowledged segment), with a backlog in
the queue as the reason, the "smart batching" of the LMAX Disruptor's consumers (take what is
there, wait for nothing more), and the model server's dynamic-batching delay as its bound:

- accepted requests wait in the ledger *pending* (status ``queued``, no batch yet), oldest first;
- every ``max_size`` of them close one batch at once;
- the rest close as one smaller batch as soon as the pull that brought them found the queue
  *drained* (it returned fewer messages than it asked for: the local queue had no more visible
  rows, the Pub/Sub client's last pull came back empty; or it came back full and a one-message
  pull after it came back empty, the sensor's ``pull_requests``), because waiting adds latency
  and no request;
- while pulls come back full (a backlog), the rest waits for the next pull to fill it, or until
  its oldest request has waited ``max_wait``.

So a backlog keeps closing full batches (every pull but the last is full), and a lone request is
in a batch on the tick that pulled it, not ``max_wait`` later. ``max_wait`` 0 closes every pull
at once. Unlike TCP, a partial batch does not also wait for the batch before it to finish: runs
are bounded by the run queue's own limits (``dagster.local.yaml``: ``max_concurrent_runs``), and
a trickle makes at most one batch per sensor tick.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta


@dataclass(frozen=True)
class BatchClosing:
    """The closing rule's two bounds (``BATCHINFER_BATCH_SIZE``,
    ``BATCHINFER_BATCH_MAX_WAIT_SECONDS``)."""

    max_size: int
    max_wait: timedelta

    def __post_init__(self) -> None:
        if self.max_size < 1:
            raise ValueError(f"batch size {self.max_size} must be at least 1")
        if self.max_wait < timedelta(0):
            raise ValueError(f"batch max wait {self.max_wait} must not be negative")

    def sizes(
        self, received: Sequence[datetime], now: datetime, *, drained: bool = False
    ) -> list[int]:
        """Sizes of the batches to close now, oldest requests first.

        ``received``: the times the pending requests were accepted, oldest first. ``drained``:
        this tick's pull found the queue empty behind what it took (the sensor's
        ``pull_requests``), so no backlog is left to fill a partial batch. What is not covered
        by the sizes stays pending.
        """
        full, rest = divmod(len(received), self.max_size)
        sizes = [self.max_size] * full
        waited = now - received[full * self.max_size] if rest else timedelta(0)
        # A request received after `now` was stamped before the host clock stepped back: its
        # wait cannot be measured, and waiting for the clock to catch up would hold the batch
        # for as long as the step. It closes now.
        if rest and (drained or waited >= self.max_wait or waited < timedelta(0)):
            sizes.append(rest)
        return sizes
