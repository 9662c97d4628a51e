"""When a ledger batch closes: at its size, or when its oldest request has waited long enough.

A run costs a fixed start-up (a process locally, a Cloud Run Job execution in production: tens
of seconds) before its model time, so a batch should be as large as the traffic allows, yet a
trickle must not wait for a full batch. The rule, the one of Nagle's algorithm and of the model
server's dynamic batching (count or delay, whichever comes first):

- accepted requests wait in the ledger *pending* (status ``queued``, no batch yet), oldest first;
- every ``max_size`` of them close one batch at once;
- the rest close as one smaller batch when the oldest of them has waited ``max_wait`` or more.

Oldest first means a backlog keeps closing full batches (the oldest pending request is always
recent, so the deadline is never reached), and a trickle is answered within ``max_wait`` plus
one sensor tick. ``max_wait`` 0 closes every pull at once (the behaviour without the rule).
The batch size then follows the throughput: ``min(max_size, arrivals per max_wait)``.
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

    def sizes(self, received: Sequence[datetime], now: datetime) -> list[int]:
        """Sizes of the batches to close now, oldest requests first.

        ``received``: the times the pending requests were accepted, oldest first. What is not
        covered by the sizes stays pending.
        """
        full, rest = divmod(len(received), self.max_size)
        sizes = [self.max_size] * full
        if rest and now - received[full * self.max_size] >= self.max_wait:
            sizes.append(rest)
        return sizes
