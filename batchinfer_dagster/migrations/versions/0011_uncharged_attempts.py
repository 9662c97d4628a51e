"""uncharged attempts: a run interrupted by a stop of ``make run`` costs its batch no attempt

``prediction_batches.uncharged_attempts``: how many of the batch's ``attempts`` ended because a
stop of ``make run`` interrupted their run (the run tagged ``batchinfer/stopped_by``). Reconcile
retries such a batch at once and counts only the other attempts against
``BATCHINFER_MAX_ATTEMPTS``: a user's Ctrl-C is not a failure of the batch. Added as 0 for every
existing row: attempts made before were all charged.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06 02:30:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("prediction_batches") as table:
        table.add_column(
            sa.Column("uncharged_attempts", sa.Integer(), nullable=False, server_default="0")
        )


def downgrade() -> None:
    with op.batch_alter_table("prediction_batches") as table:
        table.drop_column("uncharged_attempts")
