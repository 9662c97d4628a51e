"""batch model time, and the dead letters of closed rollouts settled

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06 02:30:00.000000

``prediction_batches.predicted`` and ``prediction_batches.model_seconds``: how many records the
batch's last settled run predicted, and the seconds its model call took (wall time around the
call, the client's chunks included). A rollout's report divides one by the other for each side's
measured texts/s. Both are nullable and added empty: batches settled before have no measure.

Dead letters of rollouts closed before this revision, still open: those of a promoted rollout
become ordinary (``rollout`` NULL), as ``rollout promote`` now makes them in its transaction, so
a replay requests them as normal requests of the configuration that is current now; those of a
discarded rollout are resolved as ``rollout discard`` resolves them (``resolved_by_run``
"rollout discarded"), the time of the migration as ``resolved_at``.
"""

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

# ``rollout.DISCARDED_BY`` as of this revision (a migration keeps its own copy of a value).
DISCARDED_BY = "rollout discarded"


def upgrade() -> None:
    with op.batch_alter_table("prediction_batches", schema=None) as batch_op:
        batch_op.add_column(sa.Column("predicted", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("model_seconds", sa.Float(), nullable=True))
    letters = sa.table(
        "dead_letters",
        sa.column("rollout", sa.String),
        sa.column("resolved_at", sa.DateTime(timezone=True)),
        sa.column("resolved_by_run", sa.String),
    )
    rollouts = sa.table("rollouts", sa.column("candidate", sa.String), sa.column("status"))

    def of_rollouts(status: str) -> sa.ColumnElement[bool]:
        closed = sa.select(rollouts.c.candidate).where(rollouts.c.status == status)
        return sa.and_(letters.c.resolved_at.is_(None), letters.c.rollout.in_(closed))

    bind = op.get_bind()
    bind.execute(sa.update(letters).where(of_rollouts("promoted")).values(rollout=None))
    bind.execute(
        sa.update(letters)
        .where(of_rollouts("discarded"))
        .values(resolved_at=datetime.now(UTC), resolved_by_run=DISCARDED_BY)
    )


def downgrade() -> None:
    """Drops the batch measures; settled dead letters stay as they are (nothing tells them
    from dead letters settled by promote and discard themselves)."""
    with op.batch_alter_table("prediction_batches", schema=None) as batch_op:
        batch_op.drop_column("model_seconds")
        batch_op.drop_column("predicted")
