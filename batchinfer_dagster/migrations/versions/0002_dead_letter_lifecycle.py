"""dead letter lifecycle: record id, delivery attempts, resolution and replay

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30 00:40:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("dead_letters", schema=None) as batch_op:
        batch_op.add_column(sa.Column("record_id", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("delivery_attempts", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("resolved_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("resolved_by_run", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("replayed_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("replay_message_id", sa.String(length=128), nullable=True))
        batch_op.create_index("ix_dead_letters_record_id", ["record_id"], unique=False)
    # Ledger dead letters name their record in the payload {"id": "N"}: fill record_id for them.
    dead_letters = sa.table(
        "dead_letters",
        sa.column("source", sa.String),
        sa.column("payload", sa.Text),
        sa.column("record_id", sa.BigInteger),
    )
    connection = op.get_bind()
    rows = connection.execute(
        sa.select(dead_letters.c.payload).where(dead_letters.c.source == "ledger").distinct()
    ).scalars()
    for payload in list(rows):
        digits = payload.removeprefix('{"id": "').removesuffix('"}')
        if digits.isascii() and digits.isdigit() and len(digits) <= 19:
            connection.execute(
                sa.update(dead_letters)
                .where(dead_letters.c.source == "ledger", dead_letters.c.payload == payload)
                .values(record_id=int(digits))
            )


def downgrade() -> None:
    with op.batch_alter_table("dead_letters", schema=None) as batch_op:
        batch_op.drop_index("ix_dead_letters_record_id")
        batch_op.drop_column("replay_message_id")
        batch_op.drop_column("replayed_at")
        batch_op.drop_column("resolved_by_run")
        batch_op.drop_column("resolved_at")
        batch_op.drop_column("delivery_attempts")
        batch_op.drop_column("record_id")
