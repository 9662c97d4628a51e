"""Fault 6: a flood of malformed messages mixed into good ones, on the local queue and Pub/Sub.

Every bad message becomes one dead letter with its reason, every good one one prediction, the
sensor never stops on a bad one, and SQL-looking ids are data, never SQL.
"""

from __future__ import annotations

import json
import random

from dagster import DagsterInstance

from batchinfer_dagster.chunks import chunked
from batchinfer_dagster.settings import Settings
from batchinfer_testing.daemon import run_daemon_loop
from batchinfer_testing.deployment import id_payloads, load_records, publish, pubsub_settings
from batchinfer_testing.invariants import Published, assert_invariants
from tests.services import PubSubEmulator

NOT_INT = "not a positive integer"
BAD_KINDS: list[tuple[bytes, str]] = [
    (b"not json at all", "not JSON"),
    (b"", "not JSON"),
    (b"\xff\xfe\x00\x9c garbage bytes", "not JSON"),
    (b"'; DELETE FROM prediction_requests; --", "not JSON"),
    (b"[1, 2]", "not a JSON object"),
    (b'{"text": "no id here"}', "no 'id' field"),
    (b'{"id": null}', NOT_INT),
    (b'{"id": 0}', NOT_INT),
    (b'{"id": "0"}', NOT_INT),
    (b'{"id": -7}', NOT_INT),
    (b'{"id": "-7"}', NOT_INT),
    (b'{"id": 3.5}', NOT_INT),
    (b'{"id": 1e3}', NOT_INT),
    (b'{"id": true}', NOT_INT),
    (b'{"id": 9223372036854775808}', NOT_INT),
    ('{"id": "١٢٣"}'.encode(), NOT_INT),
    ('{"id": "\U0001f600\u202e\\u0000"}'.encode(), NOT_INT),
    (b'{"id": "\x00\x01"}', "not JSON"),
    (b'{"id": "1; DROP TABLE predictions; --"}', NOT_INT),
    (b'{"id": "1 OR 1=1"}', NOT_INT),
    (b'{"id": {"$gt": 0}}', NOT_INT),
    (b'{"id": "1", "pad": "' + b"x" * 11_000 + b'"}', "over the 10240-byte limit"),
]


def bad_messages(count: int, *, huge_bytes: int, empty: bool) -> list[tuple[bytes, str]]:
    """``count`` malformed messages cycling through every kind, plus one of ``huge_bytes``.

    Pub/Sub refuses to publish an empty message ("Some messages are empty"): ``empty=False``.
    """
    huge = b'{"id": "1", "pad": "' + b"y" * (huge_bytes - 22) + b'"}'
    kinds = [kind for kind in BAD_KINDS if empty or kind[0]]
    bad = [kinds[i % len(kinds)] for i in range(count - 1)]
    return [*bad, (huge, "over the 10240-byte limit")]


def flood(
    instance: DagsterInstance, settings: Settings, *, good: int, bad: int, huge_bytes: int
) -> Published:
    """Publish ``good`` valid requests, 3 for unknown ids and ``bad`` malformed ones, shuffled."""
    records = load_records(settings, good)
    beyond = max(records) + 1_000_000
    published = Published(
        valid=records,
        unknown=[beyond, beyond + 1, 2**63 - 1],
        invalid=bad_messages(bad, huge_bytes=huge_bytes, empty=settings.queue == "local"),
    )
    payloads = id_payloads(records + published.unknown) + [p for p, _ in published.invalid]
    random.Random(6).shuffle(payloads)
    for chunk in chunked(payloads, 500):
        publish(settings, chunk)
    # A loaded machine takes minutes per batch of 256: the bound only stops a loop that hangs.
    run_daemon_loop(
        instance, settings, expect=len(records) + len(published.unknown), max_seconds=900
    )
    return published


def test_flood_on_local_queue_with_a_10_mib_message(
    instance: DagsterInstance, sqlite_settings: Settings
) -> None:
    settings = sqlite_settings.model_copy(update={"batch_size": 256, "ack_deadline_seconds": 60})
    published = flood(instance, settings, good=5000, bad=100, huge_bytes=10 * 1024 * 1024)
    counts = assert_invariants(settings, published, "flood: 100 bad in 5,000 good (local)")
    assert counts.dead_lettered == 100 + 3
    print(counts)


def test_flood_on_pubsub_emulator(
    instance: DagsterInstance, sqlite_settings: Settings, emulator: PubSubEmulator
) -> None:
    """Pub/Sub's limit is 10 MB per message (and per publish request): 9.9 MB gets through."""
    settings = pubsub_settings(
        sqlite_settings.model_copy(update={"batch_size": 128}), emulator, ack_deadline_seconds=60
    )
    published = flood(instance, settings, good=300, bad=50, huge_bytes=9_900_000)
    counts = assert_invariants(settings, published, "flood: 50 bad in 300 good (Pub/Sub)")
    assert counts.dead_lettered == 50 + 3
    assert json.loads(b'{"id": 1e3}')["id"] == 1000.0  # a float id, refused above
    print(counts)
