"""A request queue that delegates to a real one and fails at a chosen step (fault tests).

- ``crash-at-ack`` raises as a process that dies between the ledger commit and the ack would
  stop: the messages stay unacked (nacked at once, so the redelivery comes now rather than after
  the ack deadline; a redelivery keeps the message ids exactly as after a lease expiry);
- ``kill-at-ack`` SIGKILLs the process itself, once: ``marker`` records that it fired, so a
  restart runs clean;
- ``stall-after-pull`` sleeps ``stall_seconds`` after a pull, past the ack deadline, so the
  queue redelivers the messages to other ticks while this one still holds them.

What the queue saw is kept in ``Observations`` under the queue's ``name``, because Dagster
builds its own copies of a resource and a test still needs to look.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from batchinfer_dagster.clients.queue import ReceivedMessage, RequestQueue
from batchinfer_dagster.defs.resources.request_queue import RequestQueueResource

Fault = Literal["crash-at-ack", "kill-at-ack", "stall-after-pull"]


@dataclass
class Observations:
    """What a fault-injecting queue did: message ids it pulled, ack ids it failed on."""

    pulled: list[str] = field(default_factory=list)
    crashed_on: list[str] = field(default_factory=list)
    stalled: threading.Event = field(default_factory=threading.Event)


_observations: dict[str, Observations] = {}


def observations(name: str) -> Observations:
    """The observations of the queues called ``name`` (created empty on first use)."""
    return _observations.setdefault(name, Observations())


def die(marker: Path, why: str) -> None:
    """Record why in ``marker``, then SIGKILL this process (no cleanup of any kind)."""
    marker.write_text(why)
    print(f"SIGKILL {why}", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)


class FaultInjectingQueue(RequestQueue):
    """The real queue ``queue``, except that ``ack`` fails with ``fault``."""

    def __init__(
        self,
        queue: RequestQueue,
        fault: Fault,
        *,
        marker: Path | None = None,
        stall_seconds: float = 0.0,
        name: str = "default",
    ) -> None:
        self.queue = queue
        self.fault = fault
        self.marker = marker
        self.stall_seconds = stall_seconds
        self.kind = queue.kind
        self.seen = observations(name)

    @property
    def crashed_on(self) -> list[str]:
        return self.seen.crashed_on

    def publish(self, payloads: Sequence[bytes]) -> list[str]:
        return self.queue.publish(payloads)

    def pull(self, max_messages: int, timeout: float) -> list[ReceivedMessage]:
        messages = self.queue.pull(max_messages, timeout)
        self.seen.pulled += [message.message_id for message in messages]
        if self.fault == "stall-after-pull":
            self.seen.stalled.set()
            time.sleep(self.stall_seconds)
        return messages

    def ack(self, ack_ids: Sequence[str]) -> None:
        if self.fault == "stall-after-pull":
            self.queue.ack(ack_ids)
            return
        if self.fault == "kill-at-ack":
            if self.marker is None:
                raise ValueError("kill-at-ack needs a marker file")
            die(self.marker, f"after the ledger commit, before acking {len(ack_ids)} messages")
        self.seen.crashed_on[:] = list(ack_ids)
        self.queue.nack(ack_ids)
        raise ConnectionAbortedError(f"simulated crash before acking {len(ack_ids)} messages")

    def nack(self, ack_ids: Sequence[str]) -> None:
        self.queue.nack(ack_ids)

    def pull_dead_letters(self, max_messages: int, timeout: float) -> list[ReceivedMessage]:
        return self.queue.pull_dead_letters(max_messages, timeout)

    def ack_dead_letters(self, ack_ids: Sequence[str]) -> None:
        self.queue.ack_dead_letters(ack_ids)

    def close(self) -> None:
        self.queue.close()


class FaultInjectingQueueResource(RequestQueueResource):
    """``FaultInjectingQueue`` around the queue of ``inner``, passed through ``resources=``."""

    inner: RequestQueueResource
    fault: Fault
    marker_path: str | None = None
    stall_seconds: float = 0.0
    name: str = "default"

    @classmethod
    def around(
        cls, inner: RequestQueueResource, fault: Fault, **fields: Any
    ) -> FaultInjectingQueueResource:
        """``inner`` with ``fault``, keeping its lease and delivery policy (the sensor reads
        them)."""
        return cls(
            inner=inner,
            fault=fault,
            ack_deadline_seconds=inner.ack_deadline_seconds,
            max_delivery_attempts=inner.max_delivery_attempts,
            **fields,
        )

    def client(self) -> RequestQueue:
        return FaultInjectingQueue(
            self.inner.client(),
            self.fault,
            marker=Path(self.marker_path) if self.marker_path else None,
            stall_seconds=self.stall_seconds,
            name=self.name,
        )
