"""The request queue on Google Pub/Sub (or its emulator, found through ``PUBSUB_EMULATOR_HOST``).

Redelivery, the ack deadline and dead-lettering are Pub/Sub's own: the subscription carries a
dead-letter policy (created by ``batchinfer pubsub create`` here, by Terraform in production).
"""

from __future__ import annotations

import contextlib
import dataclasses
import socket
import time
from collections.abc import Sequence
from concurrent import futures
from dataclasses import dataclass

import grpc
from google.api_core import exceptions as gexc
from google.cloud import pubsub_v1
from google.pubsub_v1.services.subscriber.transports import SubscriberGrpcTransport
from google.pubsub_v1.types import DeadLetterPolicy, RetryPolicy

from batchinfer_dagster.chunks import chunked
from batchinfer_dagster.clients.queue import (
    ACK_CHUNK,
    InvalidMessageError,
    QueueUnavailableError,
    ReceivedMessage,
    RequestQueue,
)

# The emulator channel the client library opens keeps gRPC's 4 MiB receive limit, so a single
# valid message over 4 MiB (Pub/Sub allows 10 MB) failed every pull: lift it as the library's
# production channel does.
EMULATOR_CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", -1),
    ("grpc.max_receive_message_length", -1),
]
# The attribute Pub/Sub sets on a dead-lettered message: deliveries to the source subscription
# ("Forwarded messages", Pub/Sub's dead-letter topics documentation).
DEAD_LETTER_DELIVERIES_ATTRIBUTE = "CloudPubSubDeadLetterSourceDeliveryCount"
# One synchronous pull returns at most this many messages (service limit).
PULL_CHUNK = 1000
PUBLISH_TIMEOUT_SECONDS = 60.0


@dataclass(frozen=True)
class PubSubTopology:
    """The topic, subscription and dead-letter pair of the request queue, and their policies.

    The config of ``PubSubQueue`` (and of ``create_topology``), built by ``PubSubRequestQueue``
    from the ``BATCHINFER_PUBSUB_*`` settings; every field is required (defaults: ``Settings``).
    """

    project: str
    topic: str
    subscription: str
    dead_letter_topic: str
    dead_letter_subscription: str
    # The emulator's host:port (PUBSUB_EMULATOR_HOST); None for the real service.
    emulator_host: str | None
    ack_deadline_seconds: int
    max_delivery_attempts: int


def _unavailable(
    topology: PubSubTopology, exc: Exception, subscription: str | None = None
) -> QueueUnavailableError:
    where = (
        f"emulator at {topology.emulator_host}"
        if topology.emulator_host
        else f"project {topology.project}"
    )
    return QueueUnavailableError(
        f"Pub/Sub ({where}) failed: {str(exc) or type(exc).__name__}. Is it running, and do "
        f"the topic {topology.topic!r} and subscription "
        f"{(subscription or topology.subscription).rsplit('/', 1)[-1]!r} exist "
        "(`batchinfer pubsub create`)?"
    )


def source_deliveries(message: ReceivedMessage) -> int:
    """The deliveries a dead-lettered message had on its source subscription; 0: unknown."""
    text = message.attributes.get(DEAD_LETTER_DELIVERIES_ATTRIBUTE, "")
    return int(text) if text.isdigit() and len(text) < 9 else 0


def check_emulator(topology: PubSubTopology) -> None:
    """Fail in seconds, not after the publish timeout, when the emulator is not listening."""
    host, _, port = (topology.emulator_host or "").rpartition(":")
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=3).close()
    except (OSError, ValueError) as exc:
        raise _unavailable(topology, exc) from exc


def _subscriber_client(topology: PubSubTopology) -> pubsub_v1.SubscriberClient:
    if not topology.emulator_host:
        return pubsub_v1.SubscriberClient()
    channel = grpc.insecure_channel(topology.emulator_host, options=EMULATOR_CHANNEL_OPTIONS)
    return pubsub_v1.SubscriberClient(transport=SubscriberGrpcTransport(channel=channel))


class PubSubQueue(RequestQueue):
    """Publisher and synchronous-pull subscriber on one topic/subscription pair."""

    kind = "pubsub"

    def __init__(self, topology: PubSubTopology) -> None:
        self.topology = topology
        if topology.emulator_host:
            check_emulator(topology)
        self.publisher = pubsub_v1.PublisherClient()
        self.subscriber = _subscriber_client(topology)
        self.topic_path = self.publisher.topic_path(topology.project, topology.topic)
        self.subscription_path = self.subscriber.subscription_path(
            topology.project, topology.subscription
        )
        self.dead_letter_subscription_path = self.subscriber.subscription_path(
            topology.project, topology.dead_letter_subscription
        )

    def publish(self, payloads: Sequence[bytes]) -> list[str]:
        empty = [index for index, payload in enumerate(payloads) if not payload]
        if empty:
            raise InvalidMessageError(
                f"Pub/Sub refuses empty messages (message #{empty[0] + 1} of {len(payloads)} "
                "is empty); nothing was published"
            )
        pending = [self.publisher.publish(self.topic_path, bytes(p)) for p in payloads]
        try:
            return [f.result(timeout=PUBLISH_TIMEOUT_SECONDS) for f in pending]
        except (gexc.GoogleAPICallError, futures.TimeoutError) as exc:
            raise _unavailable(self.topology, exc) from exc

    def pull(
        self, max_messages: int, timeout: float, *, subscription: str | None = None
    ) -> list[ReceivedMessage]:
        subscription = subscription or self.subscription_path
        deadline = time.monotonic() + timeout
        messages: list[ReceivedMessage] = []
        while len(messages) < max_messages:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            if messages:
                # More may be ready at once; don't wait long for a backlog that has ended.
                remaining = min(remaining, 1.0)
            batch = self._pull_once(
                subscription, min(PULL_CHUNK, max_messages - len(messages)), remaining
            )
            if not batch:
                break
            messages.extend(batch)
        return messages

    def pull_dead_letters(self, max_messages: int, timeout: float) -> list[ReceivedMessage]:
        """Messages Pub/Sub moved to the dead-letter topic (its ``max_delivery_attempts``).

        They are read from the dead-letter subscription, so ``dead_letters`` shows everything
        that did not become a prediction, whatever moved it. Each one's ``delivery_attempt`` is
        the source subscription's count from Pub/Sub's attribute (0 when it is missing or not a
        number), not the dead-letter subscription's own.
        """
        return [
            dataclasses.replace(message, delivery_attempt=source_deliveries(message))
            for message in self.pull(
                max_messages, timeout, subscription=self.dead_letter_subscription_path
            )
        ]

    def ack_dead_letters(self, ack_ids: Sequence[str]) -> None:
        self.ack(ack_ids, subscription=self.dead_letter_subscription_path)

    def _pull_once(
        self, subscription: str, max_messages: int, timeout: float
    ) -> list[ReceivedMessage]:
        try:
            response = self.subscriber.pull(
                request={"subscription": subscription, "max_messages": max_messages},
                timeout=max(timeout, 0.5),
                retry=None,
            )
        except (gexc.DeadlineExceeded, gexc.RetryError):
            return []
        except gexc.GoogleAPICallError as exc:
            raise _unavailable(self.topology, exc, subscription) from exc
        return [
            ReceivedMessage(
                message_id=received.message.message_id,
                ack_id=received.ack_id,
                data=bytes(received.message.data),
                # The service counts deliveries only when a dead-letter policy is set.
                delivery_attempt=received.delivery_attempt or 1,
                publish_time=received.message.publish_time,
                attributes=dict(received.message.attributes),
            )
            for received in response.received_messages
        ]

    def ack(self, ack_ids: Sequence[str], *, subscription: str | None = None) -> None:
        try:
            for chunk in chunked(ack_ids, ACK_CHUNK):
                self.subscriber.acknowledge(
                    request={
                        "subscription": subscription or self.subscription_path,
                        "ack_ids": chunk,
                    }
                )
        except gexc.GoogleAPICallError as exc:
            raise _unavailable(self.topology, exc) from exc

    def extend(self, ack_ids: Sequence[str], seconds: int) -> None:
        self._modify_ack_deadline(ack_ids, seconds)

    def nack(self, ack_ids: Sequence[str]) -> None:
        self._modify_ack_deadline(ack_ids, 0)

    def _modify_ack_deadline(self, ack_ids: Sequence[str], seconds: int) -> None:
        try:
            for chunk in chunked(ack_ids, ACK_CHUNK):
                self.subscriber.modify_ack_deadline(
                    request={
                        "subscription": self.subscription_path,
                        "ack_ids": chunk,
                        "ack_deadline_seconds": seconds,
                    }
                )
        except gexc.GoogleAPICallError as exc:
            raise _unavailable(self.topology, exc) from exc

    def close(self) -> None:
        self.subscriber.close()
        self.publisher.stop()


def create_topology(topology: PubSubTopology) -> dict[str, str]:
    """Create topic, dead-letter topic and both subscriptions if missing; returns their paths.

    Idempotent, for the emulator or a real project. In production Terraform owns these and also
    grants the Pub/Sub service agent the rights dead-lettering needs.
    """
    publisher = pubsub_v1.PublisherClient()
    subscriber = pubsub_v1.SubscriberClient()
    project = topology.project
    topic = publisher.topic_path(project, topology.topic)
    dlq_topic = publisher.topic_path(project, topology.dead_letter_topic)
    subscription = subscriber.subscription_path(project, topology.subscription)
    dlq_subscription = subscriber.subscription_path(project, topology.dead_letter_subscription)
    try:
        for path in (topic, dlq_topic):
            with contextlib.suppress(gexc.AlreadyExists):
                publisher.create_topic(request={"name": path}, timeout=30)
        requests = [
            {"name": dlq_subscription, "topic": dlq_topic, "ack_deadline_seconds": 60},
            {
                "name": subscription,
                "topic": topic,
                "ack_deadline_seconds": topology.ack_deadline_seconds,
                "dead_letter_policy": DeadLetterPolicy(
                    dead_letter_topic=dlq_topic,
                    max_delivery_attempts=topology.max_delivery_attempts,
                ),
                "retry_policy": RetryPolicy(
                    minimum_backoff={"seconds": 1}, maximum_backoff={"seconds": 60}
                ),
            },
        ]
        for request in requests:
            with contextlib.suppress(gexc.AlreadyExists):
                subscriber.create_subscription(request=request, timeout=30)
    except gexc.GoogleAPICallError as exc:
        raise _unavailable(topology, exc) from exc
    finally:
        subscriber.close()
    return {
        "topic": topic,
        "subscription": subscription,
        "dead_letter_topic": dlq_topic,
        "dead_letter_subscription": dlq_subscription,
    }
