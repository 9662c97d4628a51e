"""prediction change sequence: commit-ordered change numbers on predictions, and tombstones

The BigQuery export (``prediction_changes.py``) moves the predictions written since its last
export. A time watermark would miss a row whose transaction committed after a later-stamped one
(``updated_at`` is the run's clock, taken before its settle commits), so the database numbers
every prediction write itself, in commit order, as migration 0004 numbers record writes:

- PostgreSQL: ``BEFORE INSERT OR UPDATE`` sets ``NEW.change_seq`` to the transaction's number,
  taken once per transaction by ``UPDATE prediction_changes SET value = value + 1 … RETURNING
  value``, whose row lock is held until the transaction ends; ``AFTER DELETE`` writes a
  tombstone in ``prediction_deletions`` the same way.
- SQLite: ``AFTER INSERT`` / ``AFTER UPDATE OF <every column but change_seq>`` increment the
  counter and stamp the row, a number per row; ``AFTER DELETE`` likewise writes the tombstone.

Existing predictions all get change number 1 (the first export moves them all); the counter
starts at 1 when there are any.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-05 19:00:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

# Every column a writer changes; an update of change_seq alone (the SQLite trigger's own) is not
# a change.
WRITTEN_COLUMNS = (
    "model, sequence, labels, scores, batch_key, run_id, created_at, updated_at, text_digest, "
    "is_current"
)

POSTGRES_TRIGGERS = [
    # One number per transaction (see migration 0004 for why), in a transaction-local setting
    # of its own, so a transaction that writes records and predictions holds two numbers.
    """
    CREATE FUNCTION batchinfer_prediction_change() RETURNS bigint LANGUAGE plpgsql AS $$
    DECLARE
        number bigint := nullif(current_setting('batchinfer.prediction_change_seq', true), '')
            ::bigint;
    BEGIN
        IF number IS NULL THEN
            UPDATE prediction_changes SET value = value + 1 WHERE id = 1 RETURNING value
                INTO number;
            PERFORM set_config('batchinfer.prediction_change_seq', number::text, true);
        END IF;
        RETURN number;
    END
    $$
    """,
    """
    CREATE FUNCTION batchinfer_stamp_prediction_change() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        NEW.change_seq := batchinfer_prediction_change();
        RETURN NEW;
    END
    $$
    """,
    """
    CREATE TRIGGER predictions_change BEFORE INSERT OR UPDATE ON predictions
    FOR EACH ROW EXECUTE FUNCTION batchinfer_stamp_prediction_change()
    """,
    """
    CREATE FUNCTION batchinfer_prediction_tombstone() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        INSERT INTO prediction_deletions (record_id, configuration, change_seq)
        VALUES (OLD.record_id, OLD.configuration, batchinfer_prediction_change())
        ON CONFLICT (record_id, configuration) DO UPDATE SET change_seq = EXCLUDED.change_seq;
        RETURN OLD;
    END
    $$
    """,
    """
    CREATE TRIGGER predictions_deletion AFTER DELETE ON predictions
    FOR EACH ROW EXECUTE FUNCTION batchinfer_prediction_tombstone()
    """,
]

_SQLITE_STAMP = """
    UPDATE prediction_changes SET value = value + 1 WHERE id = 1;
    UPDATE predictions SET change_seq = (SELECT value FROM prediction_changes WHERE id = 1)
    WHERE record_id = NEW.record_id AND configuration = NEW.configuration;
"""
SQLITE_TRIGGERS = [
    f"CREATE TRIGGER predictions_change_insert AFTER INSERT ON predictions "
    f"BEGIN {_SQLITE_STAMP} END",
    f"CREATE TRIGGER predictions_change_update AFTER UPDATE OF {WRITTEN_COLUMNS} ON predictions "
    f"BEGIN {_SQLITE_STAMP} END",
    """
    CREATE TRIGGER predictions_deletion AFTER DELETE ON predictions BEGIN
        UPDATE prediction_changes SET value = value + 1 WHERE id = 1;
        INSERT OR REPLACE INTO prediction_deletions (record_id, configuration, change_seq)
        VALUES (OLD.record_id, OLD.configuration,
                (SELECT value FROM prediction_changes WHERE id = 1));
    END
    """,
]


def upgrade() -> None:
    op.create_table(
        "prediction_changes",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("value", sa.BigInteger(), nullable=False),
    )
    op.create_table(
        "prediction_deletions",
        sa.Column("record_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("configuration", sa.String(length=64), nullable=False),
        sa.Column("change_seq", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("record_id", "configuration"),
    )
    op.create_index(
        "ix_prediction_deletions_change_seq",
        "prediction_deletions",
        ["change_seq", "record_id", "configuration"],
    )
    with op.batch_alter_table("predictions", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("change_seq", sa.BigInteger(), nullable=False, server_default="0")
        )
        batch_op.create_index(
            "ix_predictions_change_seq", ["change_seq", "record_id", "configuration"]
        )
    op.execute("UPDATE predictions SET change_seq = 1")
    op.execute(
        "INSERT INTO prediction_changes (id, value) "
        "SELECT 1, CASE WHEN EXISTS (SELECT 1 FROM predictions) THEN 1 ELSE 0 END"
    )
    triggers = POSTGRES_TRIGGERS if op.get_bind().dialect.name == "postgresql" else SQLITE_TRIGGERS
    for statement in triggers:
        op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER predictions_deletion ON predictions")
        op.execute("DROP TRIGGER predictions_change ON predictions")
        op.execute("DROP FUNCTION batchinfer_prediction_tombstone()")
        op.execute("DROP FUNCTION batchinfer_stamp_prediction_change()")
        op.execute("DROP FUNCTION batchinfer_prediction_change()")
    else:
        for name in ("deletion", "change_update", "change_insert"):
            op.execute(f"DROP TRIGGER predictions_{name}")
    with op.batch_alter_table("predictions", schema=None) as batch_op:
        batch_op.drop_index("ix_predictions_change_seq")
        batch_op.drop_column("change_seq")
    op.drop_index("ix_prediction_deletions_change_seq", table_name="prediction_deletions")
    op.drop_table("prediction_deletions")
    op.drop_table("prediction_changes")
