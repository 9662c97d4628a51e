"""An engine that gives up at once when the database is locked, for race tests.

A race test holds one transaction at a chosen statement and runs the other party there, in the
same thread. Against a lock held by that paused transaction the other party can never win, so
instead of waiting (forever on PostgreSQL, the busy timeout on SQLite) it should fail at once:
the test then knows that the lock was held, and goes on with the paused transaction. Where the
lock is missing (the bug) the other party commits, and the test's invariant says what broke.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy import Engine

from batchinfer_dagster import db

# How long the impatient party waits for a lock; any wait ends the same way (the holder is
# paused in the same thread), this only keeps the test short.
LOCK_WAIT_MILLISECONDS = 50


def impatient_engine(url: str) -> Engine:
    """An engine on ``url`` whose statements fail with ``sqlalchemy.exc.OperationalError``
    after ``LOCK_WAIT_MILLISECONDS`` waiting for a lock (SQLite: "database is locked";
    PostgreSQL: ``lock_timeout``). Dispose of it after use."""
    if db.is_sqlite(url):
        return sa.create_engine(url, connect_args={"timeout": LOCK_WAIT_MILLISECONDS / 1000})
    return sa.create_engine(
        url, connect_args={"options": f"-c lock_timeout={LOCK_WAIT_MILLISECONDS}"}
    )
