"""record change sequence: commit-ordered change numbers, deletion tombstones, import by number

The feature import read records by ``updated_at``, stamped by the writer's clock before its
transaction committed, and moved its watermark to "now - 5 s": a write that committed later than
that, or a clock stepped back, was never imported. Now the database numbers every record write
itself, in commit order (``db.record_changes``), and the import reads by that number up to the
committed horizon: no clock and no guessed lag. Deletions leave a tombstone with a number too.

Triggers rather than code, so every writer (the CLI, a ``psql`` session, a test) is numbered:
- PostgreSQL: ``BEFORE INSERT OR UPDATE OF text`` sets ``NEW.change_seq`` to the transaction's
  number, taken once per transaction by ``UPDATE record_changes SET value = value + 1 ...
  RETURNING value``, whose row lock is held until the transaction ends (all rows of one
  transaction share it); ``AFTER DELETE`` writes the tombstone the same way.
- SQLite: ``AFTER INSERT`` / ``AFTER UPDATE OF text`` increment the counter and stamp the row,
  a number per row (the database has a single writer at a time, held until commit; a per-row
  number costs 1.2 times the insert time there); ``AFTER DELETE`` likewise.

Existing records get their id as change number (ids are unique and ordered) and the counter
starts above the largest id; every feature store target starts from 0, so its next import moves
every record once more (idempotent upserts; for Vertex one append of the whole table).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-05 09:00:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

POSTGRES_TRIGGERS = [
    """
    CREATE FUNCTION batchinfer_next_record_change() RETURNS bigint LANGUAGE sql AS $$
        UPDATE record_changes SET value = value + 1 WHERE id = 1 RETURNING value
    $$
    """,
    # One number per transaction, not per row: the counter row is updated once (a per-row
    # update made a 5,000-row load chunk 2.5 times slower); the number is kept in a
    # transaction-local setting, which PostgreSQL resets at commit or rollback.
    """
    CREATE FUNCTION batchinfer_transaction_change() RETURNS bigint LANGUAGE plpgsql AS $$
    DECLARE
        number bigint := nullif(current_setting('batchinfer.change_seq', true), '')::bigint;
    BEGIN
        IF number IS NULL THEN
            number := batchinfer_next_record_change();
            PERFORM set_config('batchinfer.change_seq', number::text, true);
        END IF;
        RETURN number;
    END
    $$
    """,
    """
    CREATE FUNCTION batchinfer_stamp_record_change() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        NEW.change_seq := batchinfer_transaction_change();
        RETURN NEW;
    END
    $$
    """,
    """
    CREATE TRIGGER data_points_change BEFORE INSERT OR UPDATE OF text ON data_points
    FOR EACH ROW EXECUTE FUNCTION batchinfer_stamp_record_change()
    """,
    """
    CREATE FUNCTION batchinfer_record_tombstone() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        INSERT INTO record_deletions (record_id, change_seq)
        VALUES (OLD.id, batchinfer_transaction_change())
        ON CONFLICT (record_id) DO NOTHING;
        RETURN OLD;
    END
    $$
    """,
    """
    CREATE TRIGGER data_points_deletion AFTER DELETE ON data_points
    FOR EACH ROW EXECUTE FUNCTION batchinfer_record_tombstone()
    """,
]

_SQLITE_STAMP = """
    UPDATE record_changes SET value = value + 1 WHERE id = 1;
    UPDATE data_points SET change_seq = (SELECT value FROM record_changes WHERE id = 1)
    WHERE id = NEW.id;
"""
SQLITE_TRIGGERS = [
    f"CREATE TRIGGER data_points_change_insert AFTER INSERT ON data_points "
    f"BEGIN {_SQLITE_STAMP} END",
    f"CREATE TRIGGER data_points_change_update AFTER UPDATE OF text ON data_points "
    f"BEGIN {_SQLITE_STAMP} END",
    """
    CREATE TRIGGER data_points_deletion AFTER DELETE ON data_points BEGIN
        UPDATE record_changes SET value = value + 1 WHERE id = 1;
        INSERT OR IGNORE INTO record_deletions (record_id, change_seq)
        VALUES (OLD.id, (SELECT value FROM record_changes WHERE id = 1));
    END
    """,
]


def upgrade() -> None:
    op.create_table(
        "record_changes",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("value", sa.BigInteger(), nullable=False),
    )
    op.create_table(
        "record_deletions",
        sa.Column("record_id", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("change_seq", sa.BigInteger(), nullable=False),
    )
    op.create_index("ix_record_deletions_change_seq", "record_deletions", ["change_seq"])
    with op.batch_alter_table("data_points", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("change_seq", sa.BigInteger(), nullable=False, server_default="0")
        )
        batch_op.drop_index("ix_data_points_updated_at_id")
        batch_op.create_index("ix_data_points_change_seq_id", ["change_seq", "id"], unique=False)
    op.execute("UPDATE data_points SET change_seq = id")
    op.execute(
        "INSERT INTO record_changes (id, value) SELECT 1, COALESCE(MAX(id), 0) FROM data_points"
    )
    with op.batch_alter_table("feature_imports", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("imported_through", sa.BigInteger(), nullable=False, server_default="0")
        )
        batch_op.drop_column("watermark")
    triggers = POSTGRES_TRIGGERS if op.get_bind().dialect.name == "postgresql" else SQLITE_TRIGGERS
    for statement in triggers:
        op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER data_points_deletion ON data_points")
        op.execute("DROP TRIGGER data_points_change ON data_points")
        op.execute("DROP FUNCTION batchinfer_record_tombstone()")
        op.execute("DROP FUNCTION batchinfer_stamp_record_change()")
        op.execute("DROP FUNCTION batchinfer_transaction_change()")
        op.execute("DROP FUNCTION batchinfer_next_record_change()")
    else:
        for name in ("deletion", "change_update", "change_insert"):
            op.execute(f"DROP TRIGGER data_points_{name}")
    with op.batch_alter_table("feature_imports", schema=None) as batch_op:
        # Every target imports everything again from its first import after the downgrade.
        batch_op.add_column(
            sa.Column(
                "watermark",
                sa.DateTime(timezone=True),
                nullable=False,
                server_default="1970-01-01 00:00:00",
            )
        )
        batch_op.drop_column("imported_through")
    with op.batch_alter_table("data_points", schema=None) as batch_op:
        batch_op.drop_index("ix_data_points_change_seq_id")
        batch_op.create_index("ix_data_points_updated_at_id", ["updated_at", "id"], unique=False)
        batch_op.drop_column("change_seq")
    op.drop_table("record_deletions")
    op.drop_table("record_changes")
