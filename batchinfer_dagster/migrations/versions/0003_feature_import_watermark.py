"""feature import watermark: records carry updated_at; each feature store target keeps a watermark

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30 01:30:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("data_points", schema=None) as batch_op:
        batch_op.add_column(sa.Column("updated_at", sa.DateTime(timezone=True), nullable=True))
    # Every existing record counts as changed when it was created.
    op.execute("UPDATE data_points SET updated_at = created_at")
    with op.batch_alter_table("data_points", schema=None) as batch_op:
        batch_op.alter_column(
            "updated_at", existing_type=sa.DateTime(timezone=True), nullable=False
        )
        batch_op.create_index("ix_data_points_updated_at_id", ["updated_at", "id"], unique=False)
    op.create_table(
        "feature_imports",
        sa.Column("target", sa.String(length=300), primary_key=True),
        sa.Column("watermark", sa.DateTime(timezone=True), nullable=False),
        sa.Column("imported_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("rows_imported", sa.BigInteger(), nullable=False),
        sa.Column("full_import", sa.Boolean(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("feature_imports")
    with op.batch_alter_table("data_points", schema=None) as batch_op:
        batch_op.drop_index("ix_data_points_updated_at_id")
        batch_op.drop_column("updated_at")
