"""The rollout's row, locked: what every ledger path that depends on a rollout's status reads.

Promote, discard and start change a rollout's status; a settlement, a replay into the rollout
and a dead-lettering read it and write by it. Each reads it through ``locked_rollout_status``
in its own transaction, so on both databases one of them waits for the other's commit.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy import Connection

from batchinfer_dagster import db


def locked_rollout_status(connection: Connection, candidate: str) -> str | None:
    """The rollout's ``status``, its row locked until the transaction ends (None: no rollout).

    A no-op ``UPDATE … RETURNING`` rather than ``SELECT … FOR UPDATE``: on PostgreSQL both lock
    the row, but on SQLite ``FOR UPDATE`` renders nothing and pysqlite opens the transaction only
    at its first write, so a promote could count no open request while a replay committed a new
    batch of the rollout. The UPDATE takes SQLite's write lock before the status is read, so
    promote, discard, start, a replay into the rollout and a settlement serialize on both
    databases.
    """
    table = db.rollouts
    return connection.execute(
        sa.update(table)
        .where(table.c.candidate == candidate)
        .values(status=table.c.status)
        .returning(table.c.status)
    ).scalar_one_or_none()
