"""``InMemoryQueue``: the request queue contract (``clients/queue.py``) in a dict.

Deliveries carry a lease, a delivery count and ack ids like the local queue and Pub/Sub; a message
delivered ``max_delivery_attempts`` times without an ack is handed back by ``pull_dead_letters``.
Time is the injected ``clock``, so a test moves past a lease without sleeping.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from batchinfer_dagster import db
from batchinfer_dagster.clients.queue import LocalQueueConfig, ReceivedMessage, RequestQueue


@dataclass
class _Stored:
    message_id: str
    data: bytes
    published_at: datetime
    visible_at: datetime
    deliveries: int = 0
    ack_id: str | None = None


class InMemoryQueue(RequestQueue):
    """A queue in memory with the local queue's policy (``LocalQueueConfig``).

    ``pull`` never waits: what is visible at ``clock()`` is returned at once (a fast test has
    nothing to wait for). Thread-safe, as the sensor's lease extender calls ``extend`` from a
    thread.
    """

    kind = "memory"

    def __init__(
        self, config: LocalQueueConfig, *, clock: Callable[[], datetime] = db.utcnow
    ) -> None:
        self.config = config
        self.clock = clock
        self.messages: dict[str, _Stored] = {}
        self._ids = itertools.count(1)
        self._acks = itertools.count(1)
        self._lock = threading.Lock()

    def publish(self, payloads: Sequence[bytes]) -> list[str]:
        now = self.clock()
        with self._lock:
            ids = [str(next(self._ids)) for _ in payloads]
            for message_id, payload in zip(ids, payloads, strict=True):
                self.messages[message_id] = _Stored(message_id, bytes(payload), now, now)
        return ids

    def pull(self, max_messages: int, timeout: float) -> list[ReceivedMessage]:
        return self._claim(max_messages, exhausted=False)

    def pull_dead_letters(self, max_messages: int, timeout: float) -> list[ReceivedMessage]:
        return self._claim(max_messages, exhausted=True)

    def _claim(self, max_messages: int, *, exhausted: bool) -> list[ReceivedMessage]:
        now = self.clock()
        lease = timedelta(seconds=self.config.lease_seconds)
        claimed: list[ReceivedMessage] = []
        with self._lock:
            for stored in self.messages.values():
                if len(claimed) >= max_messages:
                    break
                used_up = stored.deliveries >= self.config.max_delivery_attempts
                if stored.visible_at > now or used_up != exhausted:
                    continue
                stored.deliveries += 0 if exhausted else 1
                stored.visible_at = now + lease
                stored.ack_id = f"ack-{next(self._acks)}"
                claimed.append(
                    ReceivedMessage(
                        message_id=stored.message_id,
                        ack_id=stored.ack_id,
                        data=stored.data,
                        delivery_attempt=stored.deliveries,
                        publish_time=stored.published_at,
                    )
                )
        return claimed

    def _by_ack(self, ack_ids: Sequence[str]) -> list[_Stored]:
        wanted = set(ack_ids)
        return [stored for stored in self.messages.values() if stored.ack_id in wanted]

    def ack(self, ack_ids: Sequence[str]) -> None:
        with self._lock:
            for stored in self._by_ack(ack_ids):
                del self.messages[stored.message_id]

    def ack_dead_letters(self, ack_ids: Sequence[str]) -> None:
        self.ack(ack_ids)

    def nack(self, ack_ids: Sequence[str]) -> None:
        self.extend(ack_ids, 0)

    def extend(self, ack_ids: Sequence[str], seconds: int) -> None:
        visible_at = self.clock() + timedelta(seconds=seconds)
        with self._lock:
            for stored in self._by_ack(ack_ids):
                stored.visible_at = visible_at

    def depth(self) -> int:
        """Messages not yet acknowledged (visible, leased or exhausted)."""
        return len(self.messages)
