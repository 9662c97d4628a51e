"""Property: no mix of hostile messages costs a good request (Hypothesis, local queue and emulator).

Each example publishes good requests for known records, requests for unknown records, and
hostile payloads (arbitrary bytes, arbitrary JSON, invalid ids, and the known poisons: a
5,000-digit id, 5,000-deep nesting, NUL bytes, an oversized payload) in a random order onto a
fresh database and queue, then runs the real sensor and prediction runs until quiet. Then: no
tick raised, every good request is predicted exactly once, every unknown id and every hostile
payload is in ``dead_letters`` with a reason, nothing is left on the queue (``assert_invariants``).
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from dagster import DagsterInstance
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from batchinfer_dagster import db, ledger
from batchinfer_dagster.settings import Settings
from batchinfer_testing.daemon import run_daemon_loop
from batchinfer_testing.deployment import (
    engine_of,
    id_payloads,
    load_records,
    publish,
    pubsub_settings,
)
from batchinfer_testing.invariants import Published, assert_invariants
from batchinfer_testing.model_server import ModelServer
from tests.services import PubSubEmulator

RECORDS = 6
EXAMPLES = 20
POISONS = [
    json.dumps({"id": "9" * 5000}).encode(),
    b'{"id": ' + b"9" * 5000 + b"}",
    b'{"id": 1, "x": ' + b"[" * 5000 + b"]" * 5000 + b"}",
    b'{"id": "1\x00"}',
    b"\x00",
    b'{"id": "1", "pad": "' + b"x" * 11_000 + b'"}',
    b'{"id": "\\ud800"}',
    b'{"id": "\xed\xa0\x80"}',
]

JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3)
    ),
    max_leaves=8,
)
INVALID_IDS = st.one_of(
    st.none(),
    st.booleans(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(max_value=0),
    st.integers(min_value=ledger.MAX_RECORD_ID + 1),
    st.text(max_size=25).filter(lambda text: not (text.isascii() and text.isdigit())),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)


def is_request_shaped(payload: bytes) -> bool:
    """A JSON object with an "id": such a payload is generated on purpose, never by chance."""
    try:
        body = json.loads(payload)
    except (ValueError, RecursionError):
        return False
    return isinstance(body, dict) and "id" in body


HOSTILE = st.one_of(
    st.binary(min_size=1, max_size=48).filter(lambda data: not is_request_shaped(data)),
    JSON_VALUES.map(lambda value: json.dumps(value).encode()).filter(
        lambda data: not is_request_shaped(data)
    ),
    st.builds(
        lambda extra, bad: json.dumps({**extra, "id": bad}).encode(),
        st.dictionaries(st.sampled_from(["a", "text", "ID"]), JSON_VALUES, max_size=2),
        INVALID_IDS,
    ),
    st.sampled_from(POISONS),
)
# ("good", index into the records) | ("unknown", id) | ("bad", payload)
ITEMS = st.lists(
    st.one_of(
        st.tuples(st.just("good"), st.integers(0, RECORDS - 1)),
        st.tuples(st.just("unknown"), st.integers(10_000, ledger.MAX_RECORD_ID)),
        st.tuples(st.just("bad"), HOSTILE),
    ),
    min_size=1,
    max_size=14,
)
# Always run too: every known poison between good requests (the first example).
ALL_POISONS = [
    ("good", 0),
    *[("bad", poison) for poison in POISONS],
    ("good", 1),
    ("unknown", 10**6),
]
PROPERTY = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def payload_of(kind: str, value: object, records: list[int]) -> bytes:
    if kind == "good":
        return id_payloads([records[value]])[0]  # type: ignore[index]
    if kind == "unknown":
        return json.dumps({"id": value}).encode()
    return value  # type: ignore[return-value]


def settle_dead_letters(instance: DagsterInstance, settings_: Settings, bad: int) -> None:
    """Tick until every hostile message reached dead_letters (a Pub/Sub pull may be partial)."""
    table = db.dead_letters
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with engine_of(settings_).connect() as connection:
            found = connection.execute(
                sa.select(sa.func.count()).where(table.c.source == ledger.DeadLetterSource.SENSOR)
            ).scalar_one()
        if found >= bad:
            return
        run_daemon_loop(instance, settings_, expect=0, max_seconds=5)


def check_mix(
    items: list[tuple[str, object]], model_server: ModelServer, emulator: PubSubEmulator | None
) -> None:
    with tempfile.TemporaryDirectory() as home, DagsterInstance.ephemeral() as instance:
        base = Settings(
            home=Path(home),
            model_url=model_server.url,
            pull_timeout_seconds=0.3,
            batch_size=4,
            batch_max_wait_seconds=0,  # a mix of under 4 requests need not wait 15 s for a batch
            feature_wait_seconds=0,
            ack_deadline_seconds=10,
        )
        settings_ = base if emulator is None else pubsub_settings(base, emulator)
        try:
            records = load_records(settings_, RECORDS)
            payloads = [payload_of(kind, value, records) for kind, value in items]
            published = Published(
                valid=[records[v] for k, v in items if k == "good"],  # type: ignore[index]
                unknown=[v for k, v in items if k == "unknown"],  # type: ignore[misc]
                invalid=[(v, "") for k, v in items if k == "bad"],  # type: ignore[misc]
            )
            publish(settings_, payloads)

            # A tick that raises fails the test here: no message may stop intake.
            report = run_daemon_loop(
                instance, settings_, expect=len(published.valid) + len(published.unknown)
            )
            settle_dead_letters(instance, settings_, len(published.invalid))

            assert report.failed_runs == 0
            assert_invariants(settings_, published, "hostile intake (property)")
        finally:
            db.dispose_engines()


@PROPERTY
@given(items=ITEMS)
@example(items=ALL_POISONS)
def test_hostile_mix_on_the_local_queue(items: list, model_server: ModelServer) -> None:
    check_mix(items, model_server, None)


@pytest.mark.pubsub
@PROPERTY
@given(items=ITEMS)
@example(items=ALL_POISONS)
def test_hostile_mix_on_the_pubsub_emulator(
    items: list, model_server: ModelServer, emulator: PubSubEmulator
) -> None:
    check_mix(items, model_server, emulator)
