"""rollouts: the candidate's model server, and the dead letters charged to a rollout

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-05 18:50:00.000000

``rollouts.model_url``: the model server a rollout's batches go to (NULL: the deployment's).
``dead_letters.rollout``: the candidate digest when the dead-lettered request was a rollout's,
so the report counts it and a replay keeps it in its rollout. Existing dead letters of rollout
requests are filled from ``prediction_requests`` → ``rollout_batches``; nothing else changes.
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("rollouts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("model_url", sa.String(length=2048), nullable=True))
    with op.batch_alter_table("dead_letters", schema=None) as batch_op:
        batch_op.add_column(sa.Column("rollout", sa.String(length=64), nullable=True))
        batch_op.create_index("ix_dead_letters_rollout", ["rollout"], unique=False)
    dead_letters = sa.table(
        "dead_letters", sa.column("message_id", sa.String), sa.column("rollout", sa.String)
    )
    requests = sa.table(
        "prediction_requests", sa.column("message_id", sa.String), sa.column("batch_key")
    )
    batches = sa.table("rollout_batches", sa.column("batch_key"), sa.column("candidate"))
    candidate = (
        sa.select(batches.c.candidate)
        .join(requests, requests.c.batch_key == batches.c.batch_key)
        .where(requests.c.message_id == dead_letters.c.message_id)
        .scalar_subquery()
    )
    op.get_bind().execute(
        sa.update(dead_letters)
        .where(dead_letters.c.message_id.is_not(None))
        .values(rollout=candidate)
    )


def downgrade() -> None:
    with op.batch_alter_table("dead_letters", schema=None) as batch_op:
        batch_op.drop_index("ix_dead_letters_rollout")
        batch_op.drop_column("rollout")
    with op.batch_alter_table("rollouts", schema=None) as batch_op:
        batch_op.drop_column("model_url")
