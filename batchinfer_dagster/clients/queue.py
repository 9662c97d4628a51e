"""The request queue: one interface, a SQL-table implementation and a Pub/Sub one.

The queue is only transport (docs/architecture.md): the sensor pulls, writes the ledger, and acks
only after the commit. Both implementations give at-least-once delivery with a lease (ack
deadline), a delivery-attempt count, and dead letters for messages that are never acknowledged.
"""

from __future__ import annotations

import threading
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from sqlalchemy import Engine

from batchinfer_dagster import db
from batchinfer_dagster.chunks import chunked

# Ack ids per statement or call: Pub/Sub's acknowledge takes at most a few thousand at once.
ACK_CHUNK = 1000


class QueueUnavailableError(RuntimeError):
    """The queue cannot be reached (emulator or Pub/Sub down, missing topic)."""


class InvalidMessageError(ValueError):
    """The queue refuses this message as such (Pub/Sub: an empty message); nothing was sent."""


@dataclass(frozen=True)
class ReceivedMessage:
    """One delivery of a message; ``ack_id`` names this delivery, not the message."""

    message_id: str
    ack_id: str
    data: bytes
    delivery_attempt: int
    publish_time: datetime
    # Pub/Sub message attributes (the dead-letter topic's carry the source's delivery count).
    attributes: Mapping[str, str] = field(default_factory=dict)


class RequestQueue(ABC):
    """Publish, pull with a short timeout, ack, nack.

    ``kind`` keeps message ids of different queues apart in the ledger (one database may have
    seen both the local queue and Pub/Sub).
    """

    kind: str = "queue"

    @abstractmethod
    def publish(self, payloads: Sequence[bytes]) -> list[str]:
        """Publish payloads in order; returns their message ids."""

    @abstractmethod
    def pull(self, max_messages: int, timeout: float) -> list[ReceivedMessage]:
        """Up to ``max_messages`` deliveries, waiting at most ``timeout`` s when none is ready."""

    @abstractmethod
    def ack(self, ack_ids: Sequence[str]) -> None:
        """Remove delivered messages for good."""

    @abstractmethod
    def nack(self, ack_ids: Sequence[str]) -> None:
        """Make delivered messages visible again at once."""

    def extend(self, ack_ids: Sequence[str], seconds: int) -> None:
        """Push the ack deadline of delivered messages ``seconds`` from now (Pub/Sub's
        ModifyAckDeadline, the local queue's lease), so a consumer still working keeps them.

        Nothing here: a queue without a deadline never takes a message back.
        """

    def pull_dead_letters(self, max_messages: int, timeout: float) -> list[ReceivedMessage]:
        """Messages the queue itself gave up on, waiting to be read into the ledger.

        Their ``delivery_attempt`` is the number of deliveries before the queue gave up (0 when
        the queue does not say); the ledger writes them to ``dead_letters``, then the caller
        acks them (``ack_dead_letters``). None here: a queue without a dead-letter policy.
        """
        return []

    def ack_dead_letters(self, ack_ids: Sequence[str]) -> None:
        """Remove dead letters once the ledger holds them."""

    def close(self) -> None:
        """Release connections."""


@dataclass(frozen=True)
class LocalQueueConfig:
    """The local queue's policy: ``BATCHINFER_ACK_DEADLINE_SECONDS`` and
    ``BATCHINFER_MAX_DELIVERY_ATTEMPTS``, both required (the defaults live in ``Settings``)."""

    # Seconds a pulled message stays invisible (Pub/Sub's ack deadline).
    lease_seconds: float
    # Deliveries before a never-acked message becomes a dead letter.
    max_delivery_attempts: int


# The ``visible_at`` of a message any pull may take: before every clock's "now".
VISIBLE_NOW = datetime(1970, 1, 1, tzinfo=UTC)


class LocalQueue(RequestQueue):
    """A queue in the app database: rows with a visibility lease, like Pub/Sub's ack deadline.

    A pull claims visible rows in one UPDATE … RETURNING (atomic on SQLite, ``SKIP LOCKED`` on
    PostgreSQL), bumps their delivery count and hides them for the lease. A message still
    unacknowledged after ``max_delivery_attempts`` deliveries is no longer delivered: like
    Pub/Sub's dead-letter topic, ``pull_dead_letters`` hands it back for the ledger, and
    ``ack_dead_letters`` removes it once the ledger holds it.

    Visibility survives a host clock that steps back (NTP after running fast): a new or nacked
    message is visible from the epoch, not from the publisher's "now"; and a lease is never set
    more than ``lease`` ahead of an honest clock, so a ``visible_at`` over twice the lease ahead
    was written by a clock that ran fast and counts as expired (the message is redelivered,
    which the ledger recognises, rather than hidden for as long as the clock was off). A step
    back of up to twice the lease can still hide a leased message for that long, no more.
    """

    kind = "local"

    def __init__(
        self,
        engine: Engine,
        config: LocalQueueConfig,
        *,
        clock: Callable[[], datetime] = db.utcnow,
    ) -> None:
        self.engine = engine
        self.config = config
        self.lease = timedelta(seconds=config.lease_seconds)
        self.max_delivery_attempts = config.max_delivery_attempts
        self.clock = clock

    def _visible(self, now: datetime) -> sa.ColumnElement[bool]:
        """Rows a pull may take at ``now``: lease over, or stamped by a clock that ran fast."""
        visible_at = db.queue_messages.c.visible_at
        return sa.or_(visible_at <= now, visible_at > now + 2 * self.lease)

    def publish(self, payloads: Sequence[bytes]) -> list[str]:
        if not payloads:
            return []
        now = self.clock()
        table = db.queue_messages
        rows = [
            {
                "payload": bytes(p),
                "published_at": now,
                "visible_at": VISIBLE_NOW,
                "delivery_attempt": 0,
            }
            for p in payloads
        ]
        with self.engine.begin() as connection:
            ids = connection.execute(table.insert().returning(table.c.id), rows).scalars().all()
        return [str(i) for i in ids]

    def pull(self, max_messages: int, timeout: float) -> list[ReceivedMessage]:
        deadline = time.monotonic() + timeout
        while True:
            messages = self._claim(max_messages, exhausted=False)
            if messages or time.monotonic() >= deadline:
                return messages
            time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))

    def pull_dead_letters(self, max_messages: int, timeout: float) -> list[ReceivedMessage]:
        """Visible messages delivered ``max_delivery_attempts`` times without an ack.

        Claimed under a lease like a pull, so a reader that dies before its ack leaves them for
        the next; their delivery count is not bumped (it is the count the ledger records).
        Returns at once: they are already here or not.
        """
        return self._claim(max_messages, exhausted=True)

    def ack_dead_letters(self, ack_ids: Sequence[str]) -> None:
        self.ack(ack_ids)

    def _claim(self, max_messages: int, *, exhausted: bool) -> list[ReceivedMessage]:
        """Lease up to ``max_messages`` visible rows: deliverable ones, or ``exhausted`` ones."""
        table = db.queue_messages
        now = self.clock()
        used_up = table.c.delivery_attempt >= self.max_delivery_attempts
        which = [self._visible(now), used_up if exhausted else sa.not_(used_up)]
        with self.engine.begin() as connection:
            candidates = (
                sa.select(table.c.id)
                .where(*which)
                .order_by(table.c.id)
                .limit(max_messages)
                .with_for_update(skip_locked=True)
                .scalar_subquery()
            )
            ack_prefix = uuid.uuid4().hex
            statement = (
                sa.update(table)
                .where(table.c.id.in_(candidates), *which)
                .values(
                    visible_at=now + self.lease,
                    delivery_attempt=table.c.delivery_attempt + (0 if exhausted else 1),
                    ack_id=sa.literal(ack_prefix + "-") + sa.cast(table.c.id, sa.String),
                )
                .returning(
                    table.c.id,
                    table.c.ack_id,
                    table.c.payload,
                    table.c.delivery_attempt,
                    table.c.published_at,
                )
            )
            rows = connection.execute(statement).all()
        rows.sort(key=lambda row: row.id)
        return [
            ReceivedMessage(
                message_id=str(row.id),
                ack_id=row.ack_id,
                data=bytes(row.payload),
                delivery_attempt=row.delivery_attempt,
                publish_time=row.published_at,
            )
            for row in rows
        ]

    def ack(self, ack_ids: Sequence[str]) -> None:
        table = db.queue_messages
        with self.engine.begin() as connection:
            for chunk in chunked(ack_ids, ACK_CHUNK):
                connection.execute(table.delete().where(table.c.ack_id.in_(chunk)))

    def nack(self, ack_ids: Sequence[str]) -> None:
        table = db.queue_messages
        with self.engine.begin() as connection:
            for chunk in chunked(ack_ids, ACK_CHUNK):
                connection.execute(
                    sa.update(table).where(table.c.ack_id.in_(chunk)).values(visible_at=VISIBLE_NOW)
                )

    def extend(self, ack_ids: Sequence[str], seconds: int) -> None:
        """Hide the messages ``seconds`` more, at most the lease (see the class docstring)."""
        table = db.queue_messages
        visible_at = self.clock() + min(timedelta(seconds=seconds), self.lease)
        with self.engine.begin() as connection:
            for chunk in chunked(ack_ids, ACK_CHUNK):
                connection.execute(
                    sa.update(table).where(table.c.ack_id.in_(chunk)).values(visible_at=visible_at)
                )

    def depth(self) -> int:
        """Messages not yet acknowledged (visible or leased)."""
        with self.engine.connect() as connection:
            return connection.execute(
                sa.select(sa.func.count()).select_from(db.queue_messages)
            ).scalar_one()


class UnreachableQueue(RequestQueue):
    """A queue that could not be opened: every call raises that ``QueueUnavailableError`` again.

    The sensor ticks with it when the Pub/Sub emulator or service does not answer, so the work
    that needs no queue (``sensors.process_tick``) still runs and the pull reports the outage.
    """

    def __init__(self, error: QueueUnavailableError, *, kind: str = "pubsub") -> None:
        self.error = error
        self.kind = kind

    def publish(self, payloads: Sequence[bytes]) -> list[str]:
        raise self.error

    def pull(self, max_messages: int, timeout: float) -> list[ReceivedMessage]:
        raise self.error

    def ack(self, ack_ids: Sequence[str]) -> None:
        raise self.error

    def nack(self, ack_ids: Sequence[str]) -> None:
        raise self.error

    def extend(self, ack_ids: Sequence[str], seconds: int) -> None:
        raise self.error

    def pull_dead_letters(self, max_messages: int, timeout: float) -> list[ReceivedMessage]:
        raise self.error

    def ack_dead_letters(self, ack_ids: Sequence[str]) -> None:
        raise self.error


class DeadlineExtender:
    """Keeps delivered messages from being redelivered while their consumer still works on them.

    On entry it pushes their ack deadline ``deadline_seconds`` from now, then again every third
    of it from a background thread until exit: the lease management Pub/Sub's streaming-pull
    clients do, for a synchronous pull. Without it, a tick that holds thousands of messages
    longer than the deadline sees them redelivered under it, and every such delivery counts
    towards the dead-letter policy. A failed extension is kept in ``error`` (the tick reports
    it), not raised: it only means the messages may come again, which the ledger recognises.
    """

    def __init__(
        self,
        queue: RequestQueue,
        ack_ids: Sequence[str],
        deadline_seconds: int,
        *,
        interval: float | None = None,
    ) -> None:
        self.queue = queue
        self.ack_ids = list(ack_ids)
        self.deadline_seconds = deadline_seconds
        self.interval = interval if interval is not None else max(1.0, deadline_seconds / 3)
        self.extensions = 0
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _extend(self) -> bool:
        try:
            self.queue.extend(self.ack_ids, self.deadline_seconds)
        except (QueueUnavailableError, sa.exc.SQLAlchemyError) as exc:
            self.error = f"extending the ack deadline of {len(self.ack_ids)} messages failed: {exc}"
            return False
        self.extensions += 1
        return True

    def _keep(self) -> None:
        while not self._stop.wait(self.interval):
            if not self._extend():
                return

    def __enter__(self) -> DeadlineExtender:
        if self.ack_ids and self._extend():
            self._thread = threading.Thread(target=self._keep, name="ack-deadline", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
