"""The one invariant every fault test ends with: nothing lost, nothing duplicated, nothing stuck.

A test records what it published in a ``Published`` (valid requests for known records, requests
for unknown records, malformed payloads with the dead-letter reason each must get), lets the
system recover on its own, then calls ``assert_invariants``. The counts it returns go into the
report (docs/reliability.md); with ``RELIABILITY_REPORT=path`` they are also appended there.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import asdict, dataclass, field

import sqlalchemy as sa

from batchinfer_dagster import db, ledger
from batchinfer_dagster.clients.queue import LocalQueue
from batchinfer_dagster.settings import Settings
from batchinfer_testing.deployment import engine_of, open_queue
from batchinfer_testing.model_server import EMBEDDING_MODEL

FINAL_REQUEST_STATUSES = {ledger.RequestStatus.DONE, ledger.RequestStatus.DEAD_LETTERED}
FINAL_BATCH_STATUSES = {ledger.BatchStatus.SUCCEEDED, ledger.BatchStatus.DEAD_LETTERED}


@dataclass
class Published:
    """What a test put on the queue, and what each message must become."""

    valid: list[int] = field(default_factory=list)
    unknown: list[int] = field(default_factory=list)
    invalid: list[tuple[bytes, str]] = field(default_factory=list)
    # Known records the model server refuses on their own (or too large to send).
    refused: list[int] = field(default_factory=list)

    @property
    def messages(self) -> int:
        return len(self.valid) + len(self.unknown) + len(self.invalid) + len(self.refused)


@dataclass(frozen=True)
class Counts:
    fault: str
    published: int
    predicted: int
    dead_lettered: int
    duplicates: int
    lost: int
    request_rows: int
    batches: int


def _decoded(payload: bytes) -> str:
    return db.storable_text(payload)


def _queue_depth(settings: Settings) -> int:
    """Messages still on the queue (a Pub/Sub pull leases what it finds: call this last)."""
    queue = open_queue(settings)
    try:
        if isinstance(queue, LocalQueue):
            return queue.depth()
        return len(queue.pull(1000, 2.0))
    finally:
        queue.close()


def _check_predictions(connection: sa.Connection, published: Published) -> int:
    table = db.predictions
    duplicates = connection.execute(
        sa.select(sa.func.count()).select_from(
            sa.select(table.c.record_id)
            .group_by(table.c.record_id, table.c.configuration)
            .having(sa.func.count() > 1)
            .subquery()
        )
    ).scalar_one()
    assert duplicates == 0, f"{duplicates} records have more than one prediction row"
    rows = connection.execute(
        sa.select(table.c.record_id, table.c.model, table.c.sequence, db.features.c.text).join(
            db.features, db.features.c.record_id == table.c.record_id, isouter=True
        )
    ).all()
    assert {row.model for row in rows} <= {EMBEDDING_MODEL}, "predictions of another model"
    predicted = Counter(row.record_id for row in rows)
    expected = set(published.valid)
    lost = sorted(expected - set(predicted))
    assert not lost, f"{len(lost)} valid requests have no prediction, e.g. {lost[:10]}"
    extra = sorted(set(predicted) - expected)
    assert not extra, f"{len(extra)} predictions for records nobody asked for: {extra[:10]}"
    wrong = [row.record_id for row in rows if row.sequence != row.text]
    assert not wrong, f"predictions answer another record's text: {wrong[:10]}"
    return len(rows)


def _check_dead_letters(connection: sa.Connection, published: Published) -> int:
    table = db.dead_letters
    rows = connection.execute(sa.select(table.c.source, table.c.payload, table.c.reason)).all()
    by_source = Counter(row.source for row in rows)
    source = ledger.DeadLetterSource
    processed = {source.SENSOR, source.LEDGER, source.MODEL}
    queue_dead = [row for row in rows if row.source not in processed]
    assert not queue_dead, f"messages dead-lettered unprocessed by the queue: {queue_dead[:3]}"
    sensor = Counter(row.payload for row in rows if row.source == ledger.DeadLetterSource.SENSOR)
    expected = Counter(_decoded(payload) for payload, _ in published.invalid)
    assert sensor == expected, (
        f"sensor dead letters differ: missing {list((expected - sensor).keys())[:5]!r:.500}, "
        f"unexpected {list((sensor - expected).keys())[:5]!r:.500}"
    )
    reasons: dict[str, set[str]] = {}
    for row in rows:
        reasons.setdefault(row.payload, set()).add(row.reason)
    for payload, reason in published.invalid:
        got = reasons[_decoded(payload)]
        assert any(reason in r for r in got), f"{payload[:80]!r}: reason {got}, want {reason!r}"
    ledger_dead = Counter(
        int(json.loads(row.payload)["id"])
        for row in rows
        if row.source == ledger.DeadLetterSource.LEDGER
    )
    assert ledger_dead == Counter(published.unknown), (
        f"ledger dead letters {sorted(ledger_dead)[:10]} != unknown ids "
        f"{sorted(published.unknown)[:10]} (a known record dead-lettered is a lost request)"
    )
    assert all(r.reason == ledger.UNKNOWN_RECORD for r in rows if r.source == source.LEDGER)
    model_dead = Counter(
        int(json.loads(row.payload)["id"]) for row in rows if row.source == source.MODEL
    )
    assert model_dead == Counter(published.refused), (
        f"model dead letters {sorted(model_dead)[:10]} != refused records "
        f"{sorted(published.refused)[:10]}"
    )
    assert all(row.reason for row in rows), "a dead letter without a reason"
    return sum(by_source.values())


def _check_ledger(connection: sa.Connection, published: Published) -> tuple[int, int]:
    requests = db.prediction_requests
    statuses = Counter(connection.execute(sa.select(requests.c.status)).scalars())
    stuck = {s: n for s, n in statuses.items() if s not in FINAL_REQUEST_STATUSES}
    assert not stuck, f"requests stuck in a non-final status: {stuck}"
    valid_rows = Counter(
        connection.execute(
            sa.select(requests.c.record_id).where(requests.c.status == ledger.RequestStatus.DONE)
        ).scalars()
    )
    assert valid_rows == Counter(published.valid), (
        "done request rows differ from the valid messages published (a redelivery that became "
        f"a second request row, or a lost one): {(valid_rows - Counter(published.valid))!r:.300}"
        f" / {(Counter(published.valid) - valid_rows)!r:.300}"
    )
    batches = db.prediction_batches
    batch_statuses = Counter(connection.execute(sa.select(batches.c.status)).scalars())
    stuck = {s: n for s, n in batch_statuses.items() if s not in FINAL_BATCH_STATUSES}
    assert not stuck, f"batches stuck in a non-final status: {stuck}"
    return statuses.total(), batch_statuses.total()


def assert_invariants(settings: Settings, published: Published, fault: str) -> Counts:
    """Assert the delivery guarantees (docs/architecture.md) after ``fault``; returns the counts."""
    engine = engine_of(settings)
    with engine.connect() as connection:
        predicted = _check_predictions(connection, published)
        dead = _check_dead_letters(connection, published)
        request_rows, batches = _check_ledger(connection, published)
    depth = _queue_depth(settings)
    assert depth == 0, f"{depth} messages still on the queue"
    counts = Counts(
        fault=fault,
        published=published.messages,
        predicted=predicted,
        dead_lettered=dead,
        duplicates=0,
        lost=0,
        request_rows=request_rows,
        batches=batches,
    )
    report = os.environ.get("RELIABILITY_REPORT")
    if report:
        with open(report, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(asdict(counts)) + "\n")
    return counts
