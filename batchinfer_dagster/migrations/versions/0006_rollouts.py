"""rollouts: a candidate configuration's ledger batches, predicted by ordinary runs

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-05 15:30:00.000000

Two new tables: ``rollouts`` (one row per candidate configuration, with its status) and
``rollout_batches`` (which ledger batches predict a candidate). No existing row changes.
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "rollouts",
        sa.Column("candidate", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("candidate"),
    )
    op.create_table(
        "rollout_batches",
        sa.Column("batch_key", sa.String(length=64), nullable=False),
        sa.Column("candidate", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("batch_key"),
    )
    op.create_index("ix_rollout_batches_candidate", "rollout_batches", ["candidate"])


def downgrade() -> None:
    op.drop_index("ix_rollout_batches_candidate", table_name="rollout_batches")
    op.drop_table("rollout_batches")
    op.drop_table("rollouts")
