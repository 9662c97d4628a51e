"""The sensor keeps what it pulled while it works, and pulls nothing while the database is down.

Real queues (the local table and the Pub/Sub emulator) with Pub/Sub's shortest ack deadline,
10 s: a message held past it must not come back while held, and must come back once released.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from dagster import DagsterInstance

from batchinfer_dagster import db
from batchinfer_dagster.clients.queue import DeadlineExtender
from batchinfer_dagster.defs.sensors import process_tick
from batchinfer_dagster.settings import Settings
from batchinfer_testing.deployment import (
    local_feature_store,
    open_queue,
    pubsub_settings,
    resources_of,
)
from batchinfer_testing.services import PostgresServer, PubSubEmulator

DEADLINE = 10  # seconds: Pub/Sub's minimum, BATCHINFER_ACK_DEADLINE_SECONDS below


def settings_for(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> Settings:
    base = Settings(
        home=tmp_path,
        database_url=f"sqlite:///{tmp_path / 'batchinfer.db'}",
        ack_deadline_seconds=DEADLINE,
    )
    if kind == "local":
        return base
    return pubsub_settings(base, request.getfixturevalue("emulator"))


@pytest.mark.parametrize("kind", ["local", "pubsub"])
def test_held_messages_outlive_their_ack_deadline_and_come_back_when_released(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    settings = settings_for(kind, tmp_path, request)
    queue = open_queue(settings)
    try:
        queue.publish([b'{"id": "1"}'])
        (message,) = queue.pull(10, 5.0)

        with DeadlineExtender(queue, [message.ack_id], DEADLINE, interval=2.0) as extender:
            time.sleep(DEADLINE + 3)  # past the deadline the pull gave it
            assert queue.pull(10, 1.0) == []  # still ours: not redelivered
        assert extender.error is None
        assert extender.extensions >= 2  # on entry, then from the background

        queue.nack([message.ack_id])
        (again,) = queue.pull(10, 5.0)  # released: it comes back, nothing was lost
        assert again.message_id == message.message_id
        queue.ack([again.ack_id])
    finally:
        queue.close()
        db.dispose_engines()


def test_a_tick_pulls_nothing_while_the_database_is_down(
    instance: DagsterInstance,
    tmp_path: Path,
    emulator: PubSubEmulator,
    postgres: PostgresServer,
    postgres_url: str,
) -> None:
    """The database goes down under a running daemon (its engine already made): each failing
    tick would otherwise spend a delivery attempt of every message it pulled, and after five the
    dead-letter policy would take valid requests."""
    settings = pubsub_settings(
        Settings(home=tmp_path, database_url=postgres_url, ack_deadline_seconds=DEADLINE),
        emulator,
    )
    queue = open_queue(settings)
    policy = resources_of(settings)["ledger"]
    store = local_feature_store(settings)
    try:
        process_tick(
            instance, policy, queue, feature_store=store, lease_seconds=DEADLINE
        )  # the schema is there
        postgres.stop("fast")
        try:
            queue.publish([b'{"id": "1"}'])
            for _ in range(3):
                with pytest.raises(db.DatabaseUnavailableError, match="nothing was pulled"):
                    process_tick(
                        instance, policy, queue, feature_store=store, lease_seconds=DEADLINE
                    )
        finally:
            postgres.start()

        (message,) = queue.pull(10, 5.0)
        assert message.delivery_attempt == 1  # the failing ticks never received it
        queue.nack([message.ack_id])
    finally:
        queue.close()
        db.dispose_engines()
