"""Fault 17: the host clock steps back (NTP after running fast) under the local queue.

Messages published while the clock ran an hour fast were stamped visible an hour ahead, and a
pull after the step saw none of them for that hour. Now a new message is visible at once whatever
the clock, and a lease more than twice the lease ahead counts as written by a fast clock.
The clock is injected; both app databases.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from batchinfer_dagster.clients.queue import LocalQueue, LocalQueueConfig
from batchinfer_dagster.settings import Settings
from batchinfer_testing.deployment import engine_of

T0 = datetime(2026, 12, 5, 9, 0, 0, tzinfo=UTC)
LEASE = timedelta(seconds=60)
MICROSECOND = timedelta(microseconds=1)


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock(T0)


@pytest.fixture
def queue(app_settings: Settings, clock: Clock) -> LocalQueue:
    config = LocalQueueConfig(
        lease_seconds=LEASE.seconds, max_delivery_attempts=app_settings.max_delivery_attempts
    )
    return LocalQueue(engine_of(app_settings), config, clock=clock)


def test_messages_published_while_the_clock_ran_fast_are_pulled_after_it_steps_back(
    queue: LocalQueue, clock: Clock
) -> None:
    clock.now = T0 + timedelta(hours=1)
    published = queue.publish([b'{"id": 1}', b'{"id": 2}'])
    clock.now = T0

    pulled = queue.pull(10, 0)

    assert [m.message_id for m in pulled] == published


def test_a_lease_taken_while_the_clock_ran_fast_expires_after_it_steps_back(
    queue: LocalQueue, clock: Clock
) -> None:
    """The consumer died holding the lease; the clock then stepped back an hour: the message is
    delivered again rather than hidden for the hour."""
    queue.publish([b'{"id": 1}'])
    clock.now = T0 + timedelta(hours=1)
    [first] = queue.pull(10, 0)
    clock.now = T0

    [again] = queue.pull(10, 0)

    assert (again.message_id, again.delivery_attempt) == (first.message_id, 2)


def claim_at(queue: LocalQueue, clock: Clock, now: datetime) -> list[str]:
    """One claim at ``now`` (no waiting): the message ids it took."""
    clock.now = now
    return [m.message_id for m in queue._claim(10, exhausted=False)]  # noqa: SLF001 - one claim, no wait


@pytest.mark.parametrize(
    ("offset", "visible"),
    [
        (-MICROSECOND, False),  # the lease's last microsecond
        (timedelta(0), True),  # the lease's end
        (-2 * LEASE, False),  # a clock stepped back: the lease ends twice the lease ahead
        (-2 * LEASE - MICROSECOND, True),  # further back: a fast clock's lease
    ],
)
def test_a_lease_hides_until_its_end_and_up_to_twice_its_length_ahead(
    queue: LocalQueue, clock: Clock, offset: timedelta, visible: bool
) -> None:
    [published] = queue.publish([b'{"id": 1}'])
    assert claim_at(queue, clock, T0) == [published]  # leased until T0 + LEASE

    taken = claim_at(queue, clock, T0 + LEASE + offset)

    assert taken == ([published] if visible else [])
