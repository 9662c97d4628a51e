"""The request queue: a table in the app database, or a Google Pub/Sub subscription.

The Pub/Sub client library is imported when a client is made, not with the code location: a
prediction run never opens the queue, and its worker starts faster without it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from dagster import ConfigurableResource
from pydantic import Field

from batchinfer_dagster.clients.queue import (
    LocalQueue,
    QueueUnavailableError,
    RequestQueue,
    UnreachableQueue,
)
from batchinfer_dagster.resources.database import DatabaseResource

if TYPE_CHECKING:
    from batchinfer_dagster.clients.pubsub_queue import PubSubTopology


class RequestQueueResource(ConfigurableResource, ABC):
    """Where prediction requests arrive; ``open`` yields a client and closes it afterwards."""

    ack_deadline_seconds: int = Field(
        default=60, ge=1, description="Seconds a pulled message stays invisible (lease)."
    )
    max_delivery_attempts: int = Field(
        default=5, ge=1, description="Deliveries before a never-acked message is dead-lettered."
    )

    @abstractmethod
    def client(self) -> RequestQueue:
        """A new client; the caller closes it (``open`` does)."""

    @contextmanager
    def open(self, *, unreachable_ok: bool = False) -> Iterator[RequestQueue]:
        """A client, closed afterwards. ``unreachable_ok``: a queue that cannot be opened
        (``QueueUnavailableError``) yields an ``UnreachableQueue`` whose calls raise that error,
        for callers with work that needs no queue (the sensor)."""
        try:
            queue = self.client()
        except QueueUnavailableError as exc:
            if not unreachable_ok:
                raise
            yield UnreachableQueue(exc)
            return
        try:
            yield queue
        finally:
            queue.close()


class LocalRequestQueue(RequestQueueResource):
    """The ``queue_messages`` table of the app database, with leases like Pub/Sub's."""

    database: DatabaseResource

    def client(self) -> RequestQueue:
        return LocalQueue(
            self.database.get_engine(),
            lease_seconds=self.ack_deadline_seconds,
            max_delivery_attempts=self.max_delivery_attempts,
        )


class PubSubRequestQueue(RequestQueueResource):
    """A Pub/Sub topic and subscription with a dead-letter topic (Terraform creates them)."""

    project: str = Field(description="Google Cloud project (BATCHINFER_PUBSUB_PROJECT).")
    topic: str = Field(default="prediction-requests")
    subscription: str = Field(default="prediction-requests-sub")
    dead_letter_topic: str = Field(default="prediction-requests-dead-letter")
    dead_letter_subscription: str = Field(default="prediction-requests-dead-letter-sub")
    emulator_host: str | None = Field(
        default=None, description="host:port of the Pub/Sub emulator (PUBSUB_EMULATOR_HOST)."
    )

    def topology(self) -> PubSubTopology:
        from batchinfer_dagster.clients.pubsub_queue import PubSubTopology

        return PubSubTopology(
            project=self.project,
            topic=self.topic,
            subscription=self.subscription,
            dead_letter_topic=self.dead_letter_topic,
            dead_letter_subscription=self.dead_letter_subscription,
            emulator_host=self.emulator_host,
            ack_deadline_seconds=self.ack_deadline_seconds,
            max_delivery_attempts=self.max_delivery_attempts,
        )

    def client(self) -> RequestQueue:
        from batchinfer_dagster.clients.pubsub_queue import PubSubQueue

        return PubSubQueue(self.topology())
