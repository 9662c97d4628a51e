"""Two real transactions interleaved: one runs in a thread, the test waits for it by state.

A reliability test that races two writers on PostgreSQL holds one at a chosen statement and
lets the other run in a ``Worker``; it then waits until that worker has either finished or is
blocked on a lock (read from ``pg_stat_activity``: a state, not a time), so no assertion depends
on how fast the machine is. PostgreSQL only: SQLite has no view of who waits on whom.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Engine

# A bound on waiting for a state that should come within milliseconds: it only stops a test
# that would otherwise hang (a deadlock, a worker that never started), it measures nothing.
WAIT_BOUND_S = 120.0
POLL_S = 0.01


class Worker(threading.Thread):
    """Runs ``work`` in a daemon thread and keeps its result or error for ``outcome``.

    ``name`` is the thread's name, so code patched by a test can tell the workers apart.
    """

    def __init__(self, work: Callable[[], Any], name: str | None = None) -> None:
        super().__init__(daemon=True, name=name)
        self.work = work
        self.result: Any = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.result = self.work()
        except BaseException as error:  # noqa: BLE001 - handed to the test's thread
            self.error = error

    def outcome(self) -> Any:
        """The work's return value once it has finished; its exception is raised here."""
        self.join(timeout=WAIT_BOUND_S)
        assert not self.is_alive(), f"{self.name} never finished"
        if self.error is not None:
            raise self.error
        return self.result


def waiting_on_a_lock(engine: Engine, *, wait_event: str | None = None) -> bool:
    """Whether a session of ``engine``'s database waits on a lock now.

    ``wait_event`` narrows it to one kind (``"advisory"`` for ``pg_advisory_lock``; ``None``:
    any heavyweight lock, a row's or a table's included).
    """
    query = (
        "SELECT count(*) FROM pg_stat_activity "
        "WHERE datname = current_database() AND wait_event_type = 'Lock'"
    )
    params: dict[str, str] = {}
    if wait_event is not None:
        query += " AND wait_event = :wait_event"
        params["wait_event"] = wait_event
    with engine.connect() as connection:
        return bool(connection.execute(sa.text(query), params).scalar_one())


def wait_until(condition: Callable[[], bool], what: str) -> None:
    """Return once ``condition()`` holds; fail the test after ``WAIT_BOUND_S`` naming ``what``."""
    deadline = time.monotonic() + WAIT_BOUND_S
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(POLL_S)


def finished_or_waiting_on_a_lock(
    engine: Engine, worker: Worker, *, wait_event: str | None = None
) -> None:
    """Return once ``worker`` has finished or a session waits on a lock (``waiting_on_a_lock``)."""
    wait_until(
        lambda: not worker.is_alive() or waiting_on_a_lock(engine, wait_event=wait_event),
        f"{worker.name} to finish or wait on a lock",
    )
