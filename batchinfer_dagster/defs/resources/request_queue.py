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
    LocalQueueConfig,
    QueueUnavailableError,
    RequestQueue,
    UnreachableQueue,
)
from batchinfer_dagster.defs.resources.database import DatabaseResource
from batchinfer_dagster.settings import described

if TYPE_CHECKING:
    from batchinfer_dagster.clients.pubsub_queue import PubSubTopology


class RequestQueueResource(ConfigurableResource, ABC):
    """Where prediction requests arrive; ``open`` yields a client and closes it afterwards.

    Every field is required: ``deployments.py`` fills them from ``Settings``, which alone holds
    their defaults and bounds.
    """

    ack_deadline_seconds: int = Field(description=described("ack_deadline_seconds"))
    max_delivery_attempts: int = Field(description=described("max_delivery_attempts"))

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

    def config(self) -> LocalQueueConfig:
        """The client's config: this resource's fields, in the one object the client takes."""
        return LocalQueueConfig(
            lease_seconds=self.ack_deadline_seconds,
            max_delivery_attempts=self.max_delivery_attempts,
        )

    def client(self) -> RequestQueue:
        return LocalQueue(self.database.get_engine(), self.config())


class PubSubRequestQueue(RequestQueueResource):
    """A Pub/Sub topic and subscription with a dead-letter topic (Terraform creates them)."""

    project: str = Field(description=described("pubsub_project"))
    topic: str = Field(description=described("pubsub_topic"))
    subscription: str = Field(description=described("pubsub_subscription"))
    dead_letter_topic: str = Field(description=described("pubsub_dead_letter_topic"))
    dead_letter_subscription: str = Field(description=described("pubsub_dead_letter_subscription"))
    emulator_host: str | None = Field(description=described("pubsub_emulator_host"))

    def topology(self) -> PubSubTopology:
        """The client's config: this resource's fields, in the one object the client takes."""
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
