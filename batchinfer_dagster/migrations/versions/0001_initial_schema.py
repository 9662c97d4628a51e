"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-25 08:39:15.863436
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "data_points",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            sa.Identity(always=False),
            nullable=False,
        ),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sqlite_autoincrement=True,
    )
    op.create_table(
        "dead_letters",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            sa.Identity(always=False),
            nullable=False,
        ),
        sa.Column("source", sa.String(length=64), nullable=False),
        sa.Column("message_id", sa.String(length=128), nullable=True),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sqlite_autoincrement=True,
    )
    with op.batch_alter_table("dead_letters", schema=None) as batch_op:
        batch_op.create_index("ix_dead_letters_message_id", ["message_id"], unique=False)

    op.create_table(
        "features",
        sa.Column("record_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("feature_timestamp", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("record_id"),
    )
    op.create_table(
        "prediction_batches",
        sa.Column("batch_key", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint("batch_key"),
    )
    with op.batch_alter_table("prediction_batches", schema=None) as batch_op:
        batch_op.create_index("ix_prediction_batches_status", ["status"], unique=False)

    op.create_table(
        "prediction_requests",
        sa.Column("message_id", sa.String(length=128), nullable=False),
        sa.Column("record_id", sa.BigInteger(), nullable=False),
        sa.Column("batch_key", sa.String(length=64), nullable=True),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("not_before", sa.DateTime(timezone=True), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("message_id"),
    )
    with op.batch_alter_table("prediction_requests", schema=None) as batch_op:
        batch_op.create_index("ix_prediction_requests_batch_key", ["batch_key"], unique=False)
        batch_op.create_index("ix_prediction_requests_record_id", ["record_id"], unique=False)
        batch_op.create_index("ix_prediction_requests_status", ["status"], unique=False)

    op.create_table(
        "predictions",
        sa.Column("record_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("model", sa.String(length=200), nullable=False),
        sa.Column("sequence", sa.Text(), nullable=False),
        sa.Column("labels", sa.JSON(), nullable=False),
        sa.Column("scores", sa.JSON(), nullable=False),
        sa.Column("batch_key", sa.String(length=64), nullable=True),
        sa.Column("run_id", sa.String(length=64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("record_id", "model"),
    )
    op.create_table(
        "queue_messages",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            sa.Identity(always=False),
            nullable=False,
        ),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        sa.Column("published_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("visible_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("delivery_attempt", sa.Integer(), nullable=False),
        sa.Column("ack_id", sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("ack_id"),
        sqlite_autoincrement=True,
    )
    with op.batch_alter_table("queue_messages", schema=None) as batch_op:
        batch_op.create_index("ix_queue_messages_visible_at", ["visible_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("queue_messages", schema=None) as batch_op:
        batch_op.drop_index("ix_queue_messages_visible_at")

    op.drop_table("queue_messages")
    op.drop_table("predictions")
    with op.batch_alter_table("prediction_requests", schema=None) as batch_op:
        batch_op.drop_index("ix_prediction_requests_status")
        batch_op.drop_index("ix_prediction_requests_record_id")
        batch_op.drop_index("ix_prediction_requests_batch_key")

    op.drop_table("prediction_requests")
    with op.batch_alter_table("prediction_batches", schema=None) as batch_op:
        batch_op.drop_index("ix_prediction_batches_status")

    op.drop_table("prediction_batches")
    op.drop_table("features")
    with op.batch_alter_table("dead_letters", schema=None) as batch_op:
        batch_op.drop_index("ix_dead_letters_message_id")

    op.drop_table("dead_letters")
    op.drop_table("data_points")
