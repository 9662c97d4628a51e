"""The feature wait a request has served, credited gap by gap (``runs.credited_wait``).

Pure arithmetic on one request: the first gap counts from receipt, later ones from the ledger's
last write, each between 0 and ``FEATURE_WAIT_MAX_STEP``; what was credited before is added.
Receipt and last write are far apart here, so a mutant that reads the wrong one changes the
answer; ``feature_waited_seconds`` 0.0 (falsy, not None) is a case of its own.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from batchinfer_dagster import ledger
from batchinfer_dagster.ledger.runs import BatchRequest, credited_wait

RECEIVED = datetime(2026, 12, 5, 9, 0, tzinfo=UTC)
WRITTEN = RECEIVED + timedelta(hours=1)
TICK = timedelta(microseconds=1)
MAX_STEP = ledger.FEATURE_WAIT_MAX_STEP


def request(waited: float | None) -> BatchRequest:
    return BatchRequest(
        message_id="m",
        record_id=1,
        status=ledger.RequestStatus.WAITING_FEATURES,
        attempts=1,
        received_at=RECEIVED,
        updated_at=WRITTEN,
        feature_waited_seconds=waited,
    )


def test_the_bound_is_two_of_the_longest_backoffs() -> None:
    assert timedelta(seconds=120) == MAX_STEP
    assert MAX_STEP == 2 * ledger.FEATURE_BACKOFF_MAX


@pytest.mark.parametrize(
    ("after", "credited"),
    [
        (timedelta(0), timedelta(0)),
        (timedelta(seconds=30), timedelta(seconds=30)),
        (MAX_STEP - TICK, MAX_STEP - TICK),
        (MAX_STEP, MAX_STEP),
        (MAX_STEP + TICK, MAX_STEP),
        (-timedelta(hours=1), timedelta(0)),  # the clock stepped back: nothing credited
        (-TICK, timedelta(0)),
    ],
    ids=["none", "30s", "below-the-bound", "at-the-bound", "one-past", "back-an-hour", "back-1us"],
)
def test_the_first_gap_counts_from_receipt(after: timedelta, credited: timedelta) -> None:
    assert credited_wait(request(None), RECEIVED + after) == credited


@pytest.mark.parametrize(
    ("after", "credited"),
    [
        (timedelta(seconds=30), timedelta(seconds=100 + 30)),
        (MAX_STEP + TICK, timedelta(seconds=100) + MAX_STEP),
        (-TICK, timedelta(seconds=100)),
    ],
    ids=["30s", "one-past-the-bound", "back-1us"],
)
def test_later_gaps_count_from_the_last_write_on_top_of_the_credit(
    after: timedelta, credited: timedelta
) -> None:
    assert credited_wait(request(100.0), WRITTEN + after) == credited


def test_a_credit_of_zero_is_a_credit_not_a_first_miss() -> None:
    """0.0 seconds credited (a look-up at once after the miss): the gap runs from the last
    write, not from receipt an hour earlier."""
    assert credited_wait(request(0.0), WRITTEN + timedelta(seconds=7)) == timedelta(seconds=7)
    assert credited_wait(request(0.5), WRITTEN) == timedelta(seconds=0.5)
